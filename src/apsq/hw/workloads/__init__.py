"""Workloads for the energy model: GEMM layer shapes traced from PyTorch models, and the built-ins."""

from apsq.hw.workloads.base import LAYER_KINDS, Layer, Workload
from apsq.hw.workloads.builtin import (
    BUILTIN_WORKLOADS,
    SWEEP_OPTION,
    WORKLOAD_OPTIONS,
    builtin_workload,
)
from apsq.hw.workloads.file import load_workload_file, workload_from_dict
from apsq.hw.workloads.trace import trace, trace_factory

__all__ = [
    "BUILTIN_WORKLOADS",
    "LAYER_KINDS",
    "Layer",
    "SWEEP_OPTION",
    "WORKLOAD_OPTIONS",
    "Workload",
    "builtin_workload",
    "load_workload_file",
    "workload_from_dict",
    "trace",
    "trace_factory",
]
