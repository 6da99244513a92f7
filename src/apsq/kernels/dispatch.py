"""The one place that picks the backend of a PSUM accumulation: one ordered table, answered once.

:data:`TABLE` lists the backends in order of preference, each as ``(backend, applicable, run)``;
:func:`route` takes the first row that applies to a :class:`Request` and, where the row has a runner,
runs it (a runner may still find the operands unfit — not exact integer codes — and answer None: the
next applicable row then decides). Rows without a runner are run by the caller in
:mod:`apsq.psum.fused` (they need the reference loop, a floor above): the tiles paths ``c`` / ``torch``
(batched-matmul tiles or given partials through the chunk kernels) and ``reference`` (the plain loop,
:func:`apsq.psum.accumulate.psum_accumulate`). :func:`describe` answers the table statically for an
op x granularity x device x dtype (``tests/kernels/test_dispatch_table.py`` pins every row).

Rows, for ``APSQ_KERNELS`` (:func:`apsq.kernels.options.backend`; ``reference`` also while a
``torch.func`` transform runs):

1. ``triton`` — products ``x [B, M, K] @ w [B, N, K]^T`` (Linear, Conv2d's im2col rows, attention's
   per-head products) with per-tensor ``[n]`` or per-channel ``[n, N]`` steps, no observer, when
   ``APSQ_KERNELS=triton`` or (``auto``) the tensors are on CUDA, and Triton is importable
   (:mod:`apsq.kernels.triton_psum`);
2. ``int_gemm`` — the same products on the CPU's ``c`` route (float32/float64, the C kernels built,
   PSUM steps with exact reciprocals), operand steps given, no observer, one dtype
   (:mod:`apsq.kernels.int_gemm_fn`);
3. ``c`` / ``torch`` — per-tensor steps only: the tiles path with the C chunk kernel
   (:mod:`apsq.kernels.chunk`) or the torch one (:mod:`apsq.kernels.chunk_torch`; ``APSQ_KERNELS=torch``,
   no C compiler, or PSUM steps whose reciprocal is inexact), for products or given partials on CPU
   float32/float64 tensors of one dtype;
4. ``reference`` — everything else (half precision on the CPU, partials on CUDA, per-channel partials,
   irregular per-channel step layouts, observers of per-channel steps).

All rows give the reference's values bit for bit (the tests pin them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from apsq.errors import APSQError
from apsq.kernels import chunk, int_gemm, options
from apsq.kernels.build import warn_fallback_once
from apsq.kernels.plan import Plan
from apsq.kernels.steps import reciprocals_exact

__all__ = ["ROUTES", "Request", "Route", "TABLE", "choose", "route", "describe", "c_backend"]

ROUTES = ("reference", "c", "torch", "triton")
"""Answers of :func:`choose` (the backend class of a tensor)."""
_FLOATS = (torch.float32, torch.float64)
OPS = ("gemm", "partials")


def c_backend() -> str:
    """``"c"`` when the C chunk kernel is usable, else ``"torch"`` (warning once); for ``APSQ_KERNELS=c``
    an APSQError naming the build error instead of the fallback."""
    if chunk.available():
        return "c"
    if options.backend() == "c":
        raise APSQError(f"APSQ_KERNELS=c but the C kernels did not build: {chunk.build_error()}")
    warn_fallback_once(chunk.build_error())
    return "torch"


def _choose(device: str, dtype: torch.dtype, steps, c_available: Callable[[], str] = c_backend) -> str:
    want = options.backend()
    if want == "reference":
        return "reference"
    if want == "triton" or (want == "auto" and device == "cuda"):
        return "triton"
    if device != "cpu" or dtype not in _FLOATS:
        return "reference"
    if want == "torch":
        return "torch"
    backend = c_available()
    if backend == "c" and steps is not None and not reciprocals_exact(steps, dtype):
        return "torch"
    return backend


def choose(x: torch.Tensor, steps: Sequence[float] | torch.Tensor | None = None) -> str:
    """The backend class (one of :data:`ROUTES`) for operands / partial sums like ``x``.

    ``steps``: the PSUM steps (floats or a tensor), when known: a ``c`` route with a step whose reciprocal is not
    exact in ``x.dtype`` becomes ``torch``. Raises APSQError for a bad ``APSQ_KERNELS`` or a forced
    ``c`` that does not build.
    """
    return _choose(x.device.type, x.dtype, steps)


@dataclass(frozen=True)
class Request:
    """One PSUM accumulation to route.

    ``op``: ``"gemm"`` (``x [B, M, K] @ w [B, N, K]^T``, the backend computes the tile products) or
    ``"partials"`` (``x`` = given tile partial sums ``[n, ...]``, ``w`` None). ``scales``: PSUM steps,
    ``[n]`` per tensor or ``[n, N]`` per channel (any other layout: only ``reference`` applies).
    ``x_step`` / ``w_step``: the operands' steps (one; one or one per row of ``w[b]``), when known."""

    op: str
    x: torch.Tensor
    w: torch.Tensor | None
    scales: torch.Tensor
    tile: int
    plan: Plan
    observe: Callable | None = None
    x_step: torch.Tensor | None = None
    w_step: torch.Tensor | None = None

    @property
    def per_channel(self) -> bool:
        return self.scales.dim() >= 2

    @property
    def lanes(self) -> bool:
        """Steps ``[n]`` or ``[n, N]`` (what the kernels take)."""
        n = self.plan.n
        if self.scales.dim() == 1:
            return self.scales.numel() == n
        n_out = self.w.shape[1] if self.w is not None else None
        return self.scales.dim() == 2 and tuple(self.scales.shape) == (n, n_out)


@dataclass(frozen=True)
class _Facts:
    """What the table's conditions read: the request's op, layout, device and dtype, the backend class
    (:func:`choose`'s answer, asked once) and which kernels are usable. :func:`route` takes them from a
    request, :func:`describe` states them."""

    op: str
    per_channel: bool
    lanes: bool
    device: str
    dtype: torch.dtype
    same_dtype: bool
    observing: bool
    operand_steps: bool
    cls: str
    have: frozenset = field(default_factory=frozenset)  # usable kernels: "triton", "int_gemm"


def _triton_applies(f: _Facts) -> bool:
    return f.op == "gemm" and f.lanes and not f.observing and f.cls == "triton" and "triton" in f.have


def _int_gemm_applies(f: _Facts) -> bool:
    return (f.op == "gemm" and f.lanes and not f.observing and f.same_dtype and f.operand_steps
            and f.dtype in _FLOATS and f.cls == "c" and options.current().int_gemm and "int_gemm" in f.have)


def _tiles_applies(backend: str) -> Callable[[_Facts], bool]:
    def applies(f: _Facts) -> bool:
        return not f.per_channel and f.lanes and f.same_dtype and f.cls == backend

    return applies


def _run_triton(r: Request) -> torch.Tensor | None:
    from apsq.kernels import triton_psum

    assert r.w is not None  # op "gemm" (the row's applicability)
    try:
        return triton_psum.gemm_psum(r.x, r.w, r.scales, r.tile, r.plan, r.x_step, r.w_step)
    except ImportError:
        return None


def _run_int_gemm(r: Request) -> torch.Tensor | None:
    from apsq.kernels.int_gemm_fn import int_gemm_psum

    assert r.w is not None and r.x_step is not None and r.w_step is not None  # op "gemm" with operand steps
    return int_gemm_psum(r.x, r.w, r.scales.to(r.x.dtype), r.tile, r.plan, (r.x_step.detach(), r.w_step.detach()))


@dataclass(frozen=True)
class Route:
    """One row of :data:`TABLE`: ``applicable(facts)``; ``run(request)`` -> ``[B, M, N]`` or None (the
    operands did not fit: the next row), or no runner (the caller in :mod:`apsq.psum.fused` runs it)."""

    backend: str
    applicable: Callable[[_Facts], bool]
    run: Callable[[Request], torch.Tensor | None] | None = None


TABLE: tuple[Route, ...] = (
    Route("triton", _triton_applies, _run_triton),
    Route("int_gemm", _int_gemm_applies, _run_int_gemm),
    Route("c", _tiles_applies("c")),
    Route("torch", _tiles_applies("torch")),
    Route("reference", lambda f: True),
)


def _triton_importable() -> bool:
    """Whether the Triton module imports (without Triton itself its gemm_psum raises ImportError, which
    :func:`_run_triton` turns into the next row)."""
    try:
        from apsq.kernels import triton_psum  # noqa: F401
    except ImportError:
        return False
    return True


def _facts(r: Request) -> _Facts:
    have = set()
    if _triton_importable():
        have.add("triton")
    if r.op == "gemm" and int_gemm.available():
        have.add("int_gemm")
    same = r.w is None or r.w.dtype == r.x.dtype
    steps = r.scales.detach().to(r.x.dtype) if same else None
    return _Facts(r.op, r.per_channel, r.lanes, r.x.device.type, r.x.dtype, same, r.observe is not None,
                  r.x_step is not None and r.w_step is not None, choose(r.x, steps), frozenset(have))


def route(r: Request) -> tuple[str, torch.Tensor | None]:
    """The backend of ``r`` (the first row of :data:`TABLE` that applies and, where it has a runner, runs)
    and its result; None for rows the caller runs (``c``, ``torch``, ``reference``)."""
    if r.op not in OPS:
        raise APSQError(f"route: op must be one of {OPS}, got {r.op!r}")
    facts = _facts(r)
    for row in TABLE:
        if not row.applicable(facts):
            continue
        if row.run is None:
            return row.backend, None
        y = row.run(r)
        if y is not None:
            return row.backend, y
    return "reference", None  # unreachable: the last row always applies


def describe(op: str, granularity: str, device: str, dtype: torch.dtype, *, observing: bool = False,
             operand_steps: bool = True, have: Sequence[str] = ("triton", "c", "int_gemm")) -> str:
    """The backend :data:`TABLE` picks for ``op`` (``gemm`` / ``partials``) with ``granularity``
    (``tensor`` / ``channel``, ``[n, N]`` steps) on ``device`` / ``dtype``, assuming operands that are
    exact codes (a runner that succeeds), power-of-two steps and the kernels in ``have`` usable, under
    the current ``APSQ_KERNELS``."""
    cls = _choose(device, dtype, [1.0], (lambda: "c") if "c" in have else (lambda: "torch"))
    facts = _Facts(op, granularity == "channel", True, device, dtype, True, observing, operand_steps, cls,
                   frozenset(have))
    return next(row.backend for row in TABLE if row.applicable(facts))
