"""The fused PSUM chunk kernel in C (``csrc/psum_chunk*.c``), compiled on first use (ctypes).

One pass per chunk: for a block of 512 output elements the kernel walks the n tile steps in order and
keeps the running values in registers / L1, instead of one torch op (one memory pass) per step.
Without a working compiler :func:`available` is False and the dispatcher uses the torch twin
(:mod:`apsq.kernels.chunk_torch`, same results).

Exactness: compiled with ``-O3 -fno-fast-math -ffp-contract=off`` (:mod:`apsq.kernels.build`), so
every ``+`` and ``*`` is one IEEE operation in the tensor's precision, in the reference's order. The
steps are powers of two, so ``x * (1/s)`` is the same correctly rounded number as the reference's
``x / s`` whenever ``1/s`` is representable (:func:`apsq.kernels.steps.reciprocals_exact`, checked by
the dispatcher). Step-size gradients are accumulated in double.
"""

from __future__ import annotations

import torch

from apsq.kernels.build import LazyLibrary, instantiate, read_source
from apsq.kernels.cabi import Entry, doubles, scalar, tensor, threads, u8_flag
from apsq.kernels.plan import Plan
from apsq.kernels.steps import step_arrays

__all__ = ["available", "build_error", "forward", "backward", "FWD", "BWD"]

_NE = lambda a: a["n"] * a["E"]  # noqa: E731
_E = lambda a: a["E"]  # noqa: E731
_N = lambda a: a["n"]  # noqa: E731

FWD = Entry("apsq_fwd", [
    tensor("p", "T", _NE), scalar("n", "long"), scalar("E", "long"), doubles("sd", _N), doubles("si", _N),
    scalar("apsq"), scalar("gs"), scalar("qn"), scalar("qp"), tensor("out", "T", _E),
    tensor("lb", "bad", _E, optional=True), u8_flag("lb8", of="lb"), threads(),
])
"""``p [n, E]`` tile partial sums -> ``out [E]`` and, for apsq, ``lb [E]`` (``last_bad``)."""

BWD = Entry("apsq_bwd", [
    tensor("p", "T", _NE), scalar("n", "long"), scalar("E", "long"), doubles("sd", _N), doubles("si", _N),
    scalar("apsq"), scalar("gs"), scalar("qn"), scalar("qp"), tensor("g", "T", _E),
    tensor("lb", "bad", _E, optional=True), u8_flag("lb8", of="lb"), tensor("gp", "T", _NE, optional=True),
    tensor("gsc", torch.float64, _N), tensor("flag", torch.uint8, _E, optional=True), threads(),
])
"""Gradient ``gp [n, E]`` (optional), step gradients ``gsc [n]`` (double), ``flag [E]`` (optional)."""


def _declare(lib) -> None:
    FWD.declare(lib)
    BWD.declare(lib)


_LIB = LazyLibrary("psum_chunk", lambda: instantiate(read_source("psum_chunk.c"), read_source("psum_chunk_body.c")),
                   _declare)


def library():
    """The loaded library, or None."""
    return _LIB.get()


def build():
    """Compile (or load from the cache) and declare; raises RuntimeError when it cannot."""
    return _LIB.build()


def available() -> bool:
    """True when the kernel compiled (or was cached) and loaded."""
    return _LIB.get() is not None


def build_error() -> str | None:
    """Why the kernel is unavailable (None when it is available)."""
    _LIB.get()
    return _LIB.error


def forward(p: torch.Tensor, s: list[float], plan: Plan, out: torch.Tensor | None = None,
            last_bad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunk forward: ``p [n, E]`` tile partial sums -> output ``[E]`` and ``last_bad [E]`` (apsq; else None).

    ``out`` / ``last_bad``: optional contiguous buffers to write into (e.g. rows of the layer output).
    """
    p = p.contiguous()
    n, e = p.shape
    out = torch.empty(e, dtype=p.dtype) if out is None else out
    lb = None
    if plan.apsq:
        lb = torch.empty(e, dtype=plan.bad_dtype) if last_bad is None else last_bad
    sd, si = step_arrays(s)
    FWD(_LIB.require(), p=p, n=n, E=e, sd=sd, si=si, apsq=int(plan.apsq), gs=plan.gs, qn=plan.qn, qp=plan.qp,
        out=out, lb=lb)
    return out, lb


def backward(p: torch.Tensor, s: list[float], g: torch.Tensor, last_bad: torch.Tensor | None, plan: Plan,
             grad_p: torch.Tensor | None = None, flag: torch.Tensor | None = None,
             write_grad_p: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Chunk backward: gradient to ``p [n, E]`` and to the n steps (float64 ``[n]``).

    ``grad_p``: optional contiguous ``[n, E]`` buffer for the gradient (may be ``p`` itself: each
    element is read before it is written). ``write_grad_p=False`` skips it (returns None for it).
    ``flag``: optional contiguous uint8 ``[E]`` buffer, set to 1 where some tile's gradient is not
    the output gradient itself (a tile or a later closing step saturated), else 0.
    """
    p = p.contiguous()
    g = g.to(p.dtype).contiguous()
    n, e = p.shape
    if not write_grad_p:
        grad_p = None
    elif grad_p is None:
        grad_p = torch.empty_like(p)
    grad_s = torch.empty(n, dtype=torch.float64)
    assert last_bad is not None or not plan.apsq  # APSQ's backward reads the forward's last_bad
    lb = last_bad.contiguous() if plan.apsq and last_bad is not None else None
    sd, si = step_arrays(s)
    BWD(_LIB.require(), p=p, n=n, E=e, sd=sd, si=si, apsq=int(plan.apsq), gs=plan.gs, qn=plan.qn, qp=plan.qp,
        g=g, lb=lb, gp=grad_p, gsc=grad_s, flag=flag)
    return grad_p, grad_s
