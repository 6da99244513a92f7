"""Run quantized layers as integers: int8 codes, int32 tile sums, shifts — the golden model.

For a layer whose operands are quantized with power-of-two steps ``s_x = 2^ex`` and ``s_w = 2^ew``
(per output channel), the tile sums ``T_i`` are exact integers in units of ``s_x * s_w`` and the
PSUM exponents are ``e_i = log2(s_i) - ex - ew`` (per output lane when ``ew`` is per channel, or when
the PSUM steps are: ``psum_granularity: channel`` gives ``log2(s_i)`` per output channel). The
result is an :class:`~apsq.integer.psum.IntPSUM` whose ``exponent`` is *absolute*: the layer output
without bias is ``code * 2^exponent``.

The promise (issue 15 item 9; tested on random layers in ``tests/regressions/test_field_failures_exact.py``):
for every mode, group size and step spread, ``layer.accumulate(x) == integer_forward(layer,
x).to_float().to(x.dtype)`` -- the float path is the exact integer result rounded once to the
layer's dtype, so bit for bit equal wherever that result fits the dtype (e.g. ``|Y| < 2^24`` units
of its finest step in float32). The float path accumulates in float64 where float32 could round
(``mode="none"`` with ``max_row sum |x codes| * 2^(w-1) > 2^24``; psq when ``n * 2^(b-1) *
2^(e_max - e_min)`` or ``2^(b + e_max - log2 u_min)`` exceeds ``2^24``; apsq when ``T_max + (gs + 1) *
2^(b-1) * 2^e_max`` exceeds ``2^24`` times the finest step; :mod:`apsq.nn.exactness`),
and refuses (:class:`~apsq.errors.APSQError`) steps that even float64 cannot carry (a span above 53
bits). Inputs move to the layer's device; the integer tile sums run on the CPU (int64).
"""

from __future__ import annotations

import torch

from apsq.errors import APSQError, check_finite
from apsq.device import module_device, to_device
from apsq.integer.psum import IntPSUM, psum_accumulate_int
from apsq.nn.layers import QUANT_LAYER_TYPES, QuantConv1d, QuantConv2d, QuantLinear, QuantMatmul
from apsq.psum.accumulate import lane_steps
from apsq.psum.tiling import matmul_partials
from apsq.psum.tiling import conv2d_partials, linear_partials

__all__ = ["integer_forward", "tile_sums"]


def _work(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 values as float32 (exact), as the float path quantizes them."""
    return x.float() if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64) else x




@torch.no_grad()
def tile_sums(layer: torch.nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer tile sums ``T [n, *out_shape]`` (int64) and the operand exponent ``ex + ew``.

    Returns ``(T, unit_exponent)`` where ``unit_exponent`` broadcasts like the output's channel
    layout (``[N]`` for Linear, ``[Co, 1, 1]`` for Conv2d, scalar for a matmul).
    """
    inputs = tuple(_work(x) for x in to_device(tuple(inputs), module_device(layer)))
    for i, x in enumerate(inputs):
        check_finite(f"input {i} of {type(layer).__name__}", x)
    if isinstance(layer, QuantLinear):  # also QuantTransposedLinear (GPT-2's Conv1D)
        xc = layer.act_quant.codes(inputs[0]).cpu()
        wc = layer.weight_quant.codes(_work(layer.linear_weight())).cpu()
        t = linear_partials(xc, wc, layer.qcfg.tile)
        unit = (layer.act_quant.exponent().reshape(()) + layer.weight_quant.exponent().reshape(-1)).cpu()
        return t, unit if unit.numel() > 1 else unit.reshape(())
    if isinstance(layer, (QuantConv1d, QuantConv2d)):  # padded as the float conv pads (every padding mode)
        x4, w4, a = layer.conv2d_args(inputs[0])
        xc = layer.act_quant.codes(x4).cpu()
        wc = layer.weight_quant.codes(_work(w4)).cpu()
        t = conv2d_partials(xc, wc, layer.qcfg.tile, a["stride"], a["padding"], a["dilation"], a["groups"])
        unit = (layer.act_quant.exponent().reshape(()) + layer.weight_quant.exponent().reshape(-1)).cpu()
        return t, unit.reshape(-1, 1, 1) if unit.numel() > 1 else unit.reshape(())
    if isinstance(layer, QuantMatmul):
        ac = layer.a_quant.codes(inputs[0]).cpu()
        bc = layer.b_quant.codes(inputs[1]).cpu()
        t = matmul_partials(ac, bc, layer.qcfg.tile)
        return t, (layer.a_quant.exponent() + layer.b_quant.exponent()).reshape(()).cpu()
    raise APSQError(f"integer_forward supports QuantLinear, QuantConv2d and QuantMatmul, got {type(layer).__name__}")


@torch.no_grad()
def integer_forward(layer: torch.nn.Module, *inputs: torch.Tensor) -> IntPSUM:
    """The layer's output without bias as ``code * 2^exponent`` computed with integer ops only.

    Codes and exponents come from the layer's current (calibrated or trained) quantizers. A Conv1d's
    result is ``[B, Co, Lo]`` (computed as a Conv2d of height 1).
    """
    r = _integer_forward(layer, *inputs)
    if isinstance(layer, QuantConv1d):  # [B, Co, 1, Lo] -> [B, Co, Lo]
        e = r.exponent.squeeze(-2) if r.exponent.dim() >= 2 else r.exponent
        return IntPSUM(r.code.squeeze(-2), e)
    return r


def _integer_forward(layer: torch.nn.Module, *inputs: torch.Tensor) -> IntPSUM:
    t, unit = tile_sums(layer, *inputs)  # an APSQError for any other module
    assert isinstance(layer, QUANT_LAYER_TYPES)
    q = layer.qcfg
    if q.mode == "none":
        r = psum_accumulate_int(t, mode="none", acc_bits=q.acc_bits)
        return IntPSUM(r.code, unit)
    n = t.shape[0]
    psum_e = lane_steps(layer.psum.lanes(layer.psum.exponents(n).cpu()), t.dim())  # [n, 1.., C, 1..] or [n, 1, ..]
    lane_e = psum_e - unit  # e_i = psum exponent - (ex + ew), per lane
    r = psum_accumulate_int(t, lane_e, mode=q.mode, gs=q.gs, bits=q.psum_bits)
    return IntPSUM(r.code, r.exponent + unit)
