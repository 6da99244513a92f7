"""The one place that picks a PSUM backend for a tensor's device and dtype.

Routes (:func:`choose`), for ``APSQ_KERNELS`` (:func:`apsq.kernels.options.backend`):

* ``reference`` — the plain loop (:func:`apsq.psum.accumulate.psum_accumulate` over
  :mod:`apsq.psum.tiling` partials), whatever the tensor;
* ``auto`` — CPU float32/float64: ``c`` (the integer GEMM :mod:`apsq.kernels.int_gemm` where the
  operands are exact codes, else batched-matmul tiles and the chunk kernel :mod:`apsq.kernels.chunk`),
  or ``torch`` (:mod:`apsq.kernels.chunk_torch`, one warning) when no C compiler works; CUDA: ``triton``
  (:mod:`apsq.kernels.triton_psum`; the reference when Triton is not importable); anything else
  (half precision, other devices): the reference;
* ``c`` / ``torch`` — that backend for CPU float32/float64 tensors (``c`` raises APSQError when the
  kernels do not build), the reference for other tensors;
* ``triton`` — Triton for every tensor (the reference where it is not importable).

Within ``c``: PSUM steps whose reciprocal is not exact in the dtype (the kernels multiply by ``1/s``)
take ``torch``; a statistics observer takes the torch chunk kernels in the forward (the C kernels do
not report every quantized value). All routes give the reference's values bit for bit (the tests
pin them); the Triton route is held to that by the Triton tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from apsq.errors import APSQError
from apsq.kernels import chunk, int_gemm, options
from apsq.kernels.build import warn_fallback_once
from apsq.kernels.steps import reciprocals_exact

__all__ = ["ROUTES", "choose", "use_int_gemm", "triton_gemm", "c_backend"]

ROUTES = ("reference", "c", "torch", "triton")
_FLOATS = (torch.float32, torch.float64)


def c_backend() -> str:
    """``"c"`` when the C chunk kernel is usable, else ``"torch"`` (warning once); for ``APSQ_KERNELS=c``
    an APSQError naming the build error instead of the fallback."""
    if chunk.available():
        return "c"
    if options.backend() == "c":
        raise APSQError(f"APSQ_KERNELS=c but the C kernels did not build: {chunk.build_error()}")
    warn_fallback_once(chunk.build_error())
    return "torch"


def choose(x: torch.Tensor, steps: Sequence[float] | torch.Tensor | None = None) -> str:
    """The backend (one of :data:`ROUTES`) for operands / partial sums like ``x``.

    ``steps``: the PSUM steps (floats or a tensor), when known: a ``c`` route with a step whose reciprocal is not
    exact in ``x.dtype`` becomes ``torch``. Raises APSQError for a bad ``APSQ_KERNELS`` or a forced
    ``c`` that does not build.
    """
    want = options.backend()
    if want == "reference":
        return "reference"
    if want == "triton" or (want == "auto" and x.device.type == "cuda"):
        return "triton"
    if x.device.type != "cpu" or x.dtype not in _FLOATS:
        return "reference"
    if want == "torch":
        return "torch"
    route = c_backend()
    if route == "c" and steps is not None and not reciprocals_exact(steps, x.dtype):
        return "torch"
    return route


def use_int_gemm(route: str, x: torch.Tensor, w: torch.Tensor, x_step: torch.Tensor | None,
                 w_step: torch.Tensor | None, observing: bool) -> bool:
    """Whether to try the integer GEMM: the ``c`` route, operand steps given, no observer, one float
    dtype, :attr:`~apsq.kernels.options.Options.int_gemm` on (the operands' exactness is checked by
    :func:`apsq.kernels.int_gemm.int_operands`)."""
    return (route == "c" and x_step is not None and w_step is not None and not observing
            and x.dtype == w.dtype and x.dtype in _FLOATS and options.current().int_gemm
            and int_gemm.available())


def triton_gemm(x3: torch.Tensor, w3: torch.Tensor, scales: torch.Tensor, tile: int, plan,
                x_step: torch.Tensor | None, w_step: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, M, N]`` from :func:`apsq.kernels.triton_psum.gemm_psum` (``x3 [B, M, K]``, ``w3 [B, N, K]``),
    or None when Triton is not importable (the caller then takes the reference route)."""
    try:
        from apsq.kernels import triton_psum
    except ImportError:
        return None
    try:
        return triton_psum.gemm_psum(x3, w3, scales, tile, plan, x_step, w_step)
    except ImportError:
        return None
