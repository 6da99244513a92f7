"""Pure quantization math with straight-through estimators (STE).

Every function here is stateless and differentiable where training needs it. The conventions follow
``docs/apsq-method.md`` section 2:

* rounding is *round half up*, ``floor(v + 1/2)`` — what an arithmetic right shift with a rounding bit
  computes in hardware, so the float (fake-quant) path and the integer path agree bit for bit;
* codes are signed, b-bit, saturating: ``[-2^(b-1), 2^(b-1) - 1]``;
* step sizes are powers of two, ``s = 2^e`` with integer ``e``, learned through a continuous ``log2``
  parameter rounded with the STE.

LSQ is Esser et al., "Learned Step Size Quantization", ICLR 2020: the gradient of
``Q_s(v) = s * clamp(round(v / s), qn, qp)`` with respect to ``s`` is ``round(v/s) - v/s`` inside the
range and ``qn`` / ``qp`` outside it, which autograd derives from the STE form below; the step-size
gradient is additionally scaled by ``g = 1 / sqrt(numel * qp)``.
"""

from __future__ import annotations

import math

import torch

from apsq.errors import check_bits
from apsq.kernels.steps import is_power_of_two

__all__ = [
    "round_half_up",
    "round_ste",
    "floor_ste",
    "grad_scale",
    "qrange",
    "pow2_ste",
    "fake_quantize",
    "quantize_codes",
    "lsq_grad_factor",
    "is_power_of_two",
]


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 1/2)``: round half up (towards +inf on ties), no gradient.

    In float16 / bfloat16 ``x + 1/2`` itself can round (``0.498046875 + 0.5`` is ``1`` in bf16), so
    there the fraction ``x - floor(x)`` (always exact) is compared with 1/2 instead.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        f = torch.floor(x)
        return torch.where(x - f >= 0.5, f + 1, f)
    return torch.floor(x + 0.5)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half up in the forward pass, identity gradient in the backward pass (STE)."""
    return x + (round_half_up(x) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor`` forward, identity backward."""
    return x + (torch.floor(x) - x).detach()


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``factor`` (LSQ's step-size gradient scaling)."""
    y = x * factor
    return (x - y).detach() + y


def qrange(bits: int, name: str = "bits") -> tuple[int, int]:
    """Signed saturating code range ``(-2^(b-1), 2^(b-1) - 1)`` for ``bits`` in 2..16."""
    check_bits(name, bits)
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def pow2_ste(log2_scale: torch.Tensor) -> torch.Tensor:
    """``2^round(log2_scale)`` with the STE through the rounding (exact powers of two)."""
    return torch.exp2(round_ste(log2_scale))


def lsq_grad_factor(numel: int, bits: int) -> float:
    """LSQ's step-size gradient scale ``1 / sqrt(numel * qp)`` (Esser et al. 2020, section 2.2)."""
    _, qp = qrange(bits)
    return 1.0 / math.sqrt(max(numel, 1) * qp)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``Q_s(x) = s * clamp(floor(x/s + 1/2), qn, qp)`` with STE through the rounding.

    ``scale`` broadcasts against ``x`` (per tensor or per channel). Gradients: STE to ``x`` inside the
    range (zero where clamped), LSQ's gradient to ``scale``.
    """
    qn, qp = qrange(bits)
    return torch.clamp(round_ste(x / scale), qn, qp) * scale


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes ``clamp(floor(x/s + 1/2), qn, qp)`` as ``int64`` (no gradient)."""
    qn, qp = qrange(bits)
    return torch.clamp(round_half_up(x / scale), qn, qp).to(torch.int64)


