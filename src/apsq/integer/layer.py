"""Run quantized layers as integers: int8 codes, int32 tile sums, shifts — the golden model.

For a layer whose operands are quantized with power-of-two steps ``s_x = 2^ex`` and ``s_w = 2^ew``
(per output channel), the tile sums ``T_i`` are exact integers in units of ``s_x * s_w`` and the
PSUM exponents are ``e_i = log2(s_i) - ex - ew`` (per output lane when ``ew`` is per channel). The
result is an :class:`~apsq.integer.psum.IntPSUM` whose ``exponent`` is *absolute*: the layer output
without bias is ``code * 2^exponent``. It equals the fake-quant float path bit for bit whenever the
float path's intermediates stay below 2^24 units of the finest step (always true for INT8 operands
and tiles up to 1024).
"""

from __future__ import annotations

import torch

from apsq.errors import APSQError, check_finite
from apsq.integer.psum import IntPSUM, psum_accumulate_int
from apsq.nn.layers import QuantConv2d, QuantLinear, QuantMatmul
from apsq.psum.tiling import matmul_partials
from apsq.psum.tiling import conv2d_partials, linear_partials

__all__ = ["integer_forward", "tile_sums"]




@torch.no_grad()
def tile_sums(layer: torch.nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer tile sums ``T [n, *out_shape]`` (int64) and the operand exponent ``ex + ew``.

    Returns ``(T, unit_exponent)`` where ``unit_exponent`` broadcasts like the output's channel
    layout (``[N]`` for Linear, ``[Co, 1, 1]`` for Conv2d, scalar for a matmul).
    """
    for i, x in enumerate(inputs):
        check_finite(f"input {i} of {type(layer).__name__}", x)
    if isinstance(layer, QuantLinear):
        xc = layer.act_quant.codes(inputs[0])
        wc = layer.weight_quant.codes(layer.weight)
        t = linear_partials(xc, wc, layer.qcfg.tile)
        unit = layer.act_quant.exponent().reshape(()) + layer.weight_quant.exponent().reshape(-1)
        return t, unit if unit.numel() > 1 else unit.reshape(())
    if isinstance(layer, QuantConv2d):
        xc = layer.act_quant.codes(inputs[0])
        wc = layer.weight_quant.codes(layer.weight)
        t = conv2d_partials(xc, wc, layer.qcfg.tile, layer.stride, layer.padding, layer.dilation, layer.groups)
        unit = layer.act_quant.exponent().reshape(()) + layer.weight_quant.exponent().reshape(-1)
        return t, unit.reshape(-1, 1, 1) if unit.numel() > 1 else unit.reshape(())
    if isinstance(layer, QuantMatmul):
        ac = layer.a_quant.codes(inputs[0])
        bc = layer.b_quant.codes(inputs[1])
        t = matmul_partials(ac, bc, layer.qcfg.tile)
        return t, (layer.a_quant.exponent() + layer.b_quant.exponent()).reshape(())
    raise APSQError(f"integer_forward supports QuantLinear, QuantConv2d and QuantMatmul, got {type(layer).__name__}")


@torch.no_grad()
def integer_forward(layer: torch.nn.Module, *inputs: torch.Tensor) -> IntPSUM:
    """The layer's output without bias as ``code * 2^exponent`` computed with integer ops only.

    Codes and exponents come from the layer's current (calibrated or trained) quantizers.
    """
    t, unit = tile_sums(layer, *inputs)
    q = layer.qcfg
    if q.mode == "none":
        r = psum_accumulate_int(t, mode="none", acc_bits=q.acc_bits)
        return IntPSUM(r.code, unit)
    n = t.shape[0]
    psum_e = layer.psum.exponents(n)
    lane_e = psum_e.reshape(n, *([1] * (t.dim() - 1))) - unit  # e_i = psum exponent - (ex + ew), per lane
    r = psum_accumulate_int(t, lane_e, mode=q.mode, gs=q.gs, bits=q.psum_bits)
    return IntPSUM(r.code, r.exponent + unit)
