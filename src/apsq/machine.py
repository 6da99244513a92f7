"""Where a number was measured: the CPU, its widest vector extension, the load, and the settings that
decide float rounding on a CPU.

Results files, benchmarks and reports record these beside what they measured so that two runs can be
compared (``results/sentiment_minilm/README.md``, "Reproducing": the same settings give the same
weights bit for bit; torch's other CPU kernels or another thread count do not). One reading of
``/proc/cpuinfo`` for all of them; on a system without it (macOS, Windows) the names fall back to
:func:`platform.processor`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["FLOAT_SETTINGS", "cpu_name", "vector_isa", "cpu_label", "load_average", "describe", "float_environment"]

FLOAT_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS",
                  "APSQ_KERNELS")
"""Environment variables that change which float kernels (and summation orders) torch and apsq run."""


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`, else ``"unknown"``."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def vector_isa() -> str:
    """The widest x86 vector extension the CPU reports: ``"AVX-512"``, ``"AVX2"`` or ``""`` (neither,
    or not known here)."""
    flags = next((ln for ln in _cpuinfo().splitlines() if ln.startswith("flags")), "").split()
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""


def cpu_label() -> str:
    """``cpu_name()`` with its widest vector extension, e.g. ``"AMD EPYC 7B12 (AVX2)"``."""
    isa = vector_isa()
    return f"{cpu_name()} ({isa})" if isa else cpu_name()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, rounded to 0.01 (None where the OS does not report them)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def describe() -> dict[str, Any]:
    """The machine a run used, for its report: ``cpu`` (:func:`cpu_name`), ``vector_isa``, ``cpus`` (logical
    CPUs) and ``load_avg_1m`` (the load when it was recorded: a shared machine's timings depend on it)."""
    load = load_average()
    return {"cpu": cpu_name(), "vector_isa": vector_isa(), "cpus": os.cpu_count(),
            "load_avg_1m": load[0] if load else None}


def float_environment() -> dict[str, Any]:
    """What decides the float rounding of a CPU run: torch's version, its CPU capability (the kernels it
    dispatches to), its intra-op threads, :data:`FLOAT_SETTINGS` as set (None where unset), the CPU and
    its widest vector extension. The integer PSUM kernel is not listed: it is exact on every ISA."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), **{k: os.environ.get(k) for k in FLOAT_SETTINGS},
            "cpu": cpu_name(), "vector_isa": vector_isa()}
