"""The kernels' options: the only place that reads the environment for them.

One environment variable (the cache root, ``APSQ_CACHE``, is read by :mod:`apsq.cache` for every
cache: data, kernels, RTL builds):

* ``APSQ_KERNELS`` = ``auto`` (default) | ``reference`` | ``c`` | ``torch`` | ``triton`` — forces a
  backend (tests, benchmarks). ``auto``: C on CPU float32/float64 tensors (the torch kernels when no C
  compiler works, with one warning), Triton on CUDA tensors, the reference loop elsewhere.
  ``reference``: the plain loop of :mod:`apsq.psum.accumulate` and autograd LSQ everywhere.
  ``c``: the C kernels (an :class:`~apsq.errors.APSQError` when they do not build). ``torch``: the
  vectorised torch kernels and autograd LSQ (no C). ``triton``: the Triton kernels (the reference
  where Triton is not importable, and on CPU tensors without ``TRITON_INTERPRET=1``).

Finer choices that benchmarks and tests make (which micro-kernel build, the chunk size, turning the
integer GEMM or the LSQ kernel off for an ablation) are not environment switches: they are fields
of :class:`Options`, set for a block of code with :func:`override` (a context variable: per thread
and per task).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from apsq.errors import APSQError, check_choice, check_int

__all__ = ["BACKENDS", "ISAS", "Options", "current", "override", "backend", "transforms_active", "compiler_candidates"]

BACKENDS = ("auto", "reference", "c", "torch", "triton")
"""Values of ``APSQ_KERNELS``."""

ISAS = ("native", "avx512bw", "avx2", "portable")
"""Builds of the integer GEMM kernel (:data:`apsq.kernels.int_gemm.GEMM_ISAS`)."""

CHUNK_ELEMENTS = 1 << 22
"""Default number of tile partial sums (n x chunk elements) computed per chunk: 16 MiB in float32.
Larger chunks make the per-tile batched matmuls (reduction depth = tile) more efficient and cost
transient memory (benchmarks/bench_layer.py, docs/performance.md)."""


@dataclass(frozen=True)
class Options:
    """Programmatic kernel options (see the module docstring).

    Attributes:
        backend: one of :data:`BACKENDS`; None = ``APSQ_KERNELS`` (default ``auto``).
        isa: integer GEMM build, one of :data:`ISAS`. ``native`` (default) uses the integer path
            only where the build has a SIMD micro-kernel; naming a build uses it in any case.
        chunk_elements: tile partial sums per chunk of the float-tile path (>= 1).
        int_gemm: False turns the integer GEMM off (tiles from a batched matmul instead).
        fused_lsq: False turns the one-pass LSQ kernel off (autograd LSQ instead).
    """

    backend: str | None = None
    isa: str = "native"
    chunk_elements: int = CHUNK_ELEMENTS
    int_gemm: bool = True
    fused_lsq: bool = True

    def __post_init__(self) -> None:
        if self.backend is not None:
            check_choice("backend", self.backend, BACKENDS)
        check_choice("isa", self.isa, ISAS)
        check_int("chunk_elements", self.chunk_elements, lo=1)
        for name in ("int_gemm", "fused_lsq"):
            if not isinstance(getattr(self, name), bool):
                raise APSQError(f"{name} must be True or False, got {getattr(self, name)!r}")


_CURRENT: contextvars.ContextVar[Options] = contextvars.ContextVar("apsq_kernel_options", default=Options())


def current() -> Options:
    """The options in effect here."""
    return _CURRENT.get()


@contextlib.contextmanager
def override(**changes) -> Iterator[Options]:
    """Within the block, the current options with ``changes`` (fields of :class:`Options`).

    Raises APSQError for an unknown field or a bad value, before anything changes.
    """
    fields = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise APSQError(f"unknown kernel option(s) {unknown}; allowed: {sorted(fields)}")
    opts = dataclasses.replace(current(), **changes)
    token = _CURRENT.set(opts)
    try:
        yield opts
    finally:
        _CURRENT.reset(token)


def transforms_active() -> bool:
    """True while a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...) runs."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def backend() -> str:
    """The forced backend: ``reference`` while a ``torch.func`` transform runs (the kernels' autograd
    Functions are first-order and not vmappable: :mod:`apsq.kernels.autograd`), else
    :attr:`Options.backend` if set, else ``$APSQ_KERNELS`` (default ``auto``).

    Raises APSQError naming ``APSQ_KERNELS`` and the allowed values when the variable is bad.
    """
    if transforms_active():
        return "reference"
    chosen = current().backend
    if chosen is not None:
        return chosen
    value = os.environ.get("APSQ_KERNELS", "").strip().lower() or "auto"
    check_choice("APSQ_KERNELS", value, BACKENDS)
    return value


def compiler_candidates() -> list[str]:
    """C compilers to try, in order: ``$CC`` (when set), ``cc``, ``gcc``, ``clang``."""
    cc = os.environ.get("CC")
    return [c for c in (cc, "cc", "gcc", "clang") if c]
