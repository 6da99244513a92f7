"""``QuantConv1d`` / ``QuantConv2d`` on the layer template (:mod:`apsq.nn.layers.base`): the input padded
as torch pads it, lowered to a Conv2d (a Conv1d is one of height 1) and reduced by im2col along
K = ``Ci/groups * prod(kernel)`` (:func:`apsq.psum.tiling.conv2d_partials`)."""

from __future__ import annotations

import math
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from apsq.nn.config import LayerQuantConfig
from apsq.nn.exactness import work_dtype
from apsq.nn.layers.base import Inputs, Samples, WeightedQuantLayer, exact_under_autocast
from apsq.psum.tiling import conv2d_partials

__all__ = ["QuantConv1d", "QuantConv2d"]


class Conv2dArgs(TypedDict):
    """The geometry of the lowered Conv2d (``F.conv2d``'s keyword arguments)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


class _QuantConvNd(WeightedQuantLayer, _ConvNd):
    """Shared by :class:`QuantConv1d` / :class:`QuantConv2d`: padding, 2-D lowering, calibration."""

    _spatial = 2

    def __init__(self, *args: Any, qcfg: LayerQuantConfig, check_finite: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # the nn.Conv1d / nn.Conv2d of the concrete class
        self._setup_weighted(qcfg, check_finite, self.out_channels, kwargs.get("dtype"), kwargs.get("device"),
                             channel_axis=-3)  # [B, Co, Ho, Wo]

    @classmethod
    def from_float(cls, mod: _ConvNd, qcfg: LayerQuantConfig, check_finite: bool = True) -> _QuantConvNd:
        """A quantized twin of the float conv ``mod`` sharing its parameters (padding mode, dtype and
        device kept)."""
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None, padding_mode=mod.padding_mode,
                qcfg=qcfg, check_finite=check_finite, device=mod.weight.device, dtype=mod.weight.dtype)
        q.weight = mod.weight
        q.bias = mod.bias
        return q

    def pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``(x padded as the float conv pads it, padding left for the convolution itself)``.

        Numeric zero padding is left to the convolution; every other form -- ``padding_mode``
        ``reflect`` / ``replicate`` / ``circular``, ``padding="same"`` (asymmetric for even kernels)
        and ``"valid"`` -- is applied here with :func:`torch.nn.functional.pad`, as ``nn.Conv*d`` does.
        """
        zeros = (0,) * self._spatial
        if self.padding_mode == "zeros" and not isinstance(self.padding, str):
            return x, tuple(self.padding)
        pads = self._reversed_padding_repeated_twice
        if any(pads):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pads, mode=mode)
        return x, zeros

    def conv2d_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Conv2dArgs]:
        """``(x4 [B, C, H, W], w4 [Co, Ci/g, kh, kw], dict(stride, padding, dilation, groups))``: the
        padded input and weight as a Conv2d (a Conv1d is a Conv2d of height 1)."""
        xp, pad = self.pad_input(x)
        w = self.weight
        if self._spatial == 1:
            return xp.unsqueeze(2), w.unsqueeze(2), {"stride": (1, self.stride[0]), "padding": (0, pad[0]),
                                                         "dilation": (1, self.dilation[0]), "groups": self.groups}
        return xp, w, {"stride": (self.stride[0], self.stride[1]), "padding": (pad[0], pad[1]),
                       "dilation": (self.dilation[0], self.dilation[1]), "groups": self.groups}

    def _from2d(self, y: torch.Tensor) -> torch.Tensor:
        return y.squeeze(2) if self._spatial == 1 else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward((x,), ("x",))

    @exact_under_autocast
    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized PSUM tiles ``[n, B, Co, *spatial_out]`` (no bias; float32 or wider)."""
        dt = work_dtype(x.dtype)
        x4, w4, a = self.conv2d_args(self.act_quant(x.to(dt)))
        p = conv2d_partials(x4, self.weight_quant(w4.to(dt)), self.qcfg.tile, a["stride"], a["padding"],
                            a["dilation"], a["groups"])
        return p.squeeze(3) if self._spatial == 1 else p

    # --- template hooks -------------------------------------------------------------------------
    def _k(self) -> int:
        return (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def _rows_per_item(self, item_shape: tuple[int, ...]) -> int:
        return math.prod(item_shape[1:])  # pixels of one image

    def _reduce(self, inputs: Inputs, dtype: torch.dtype, a_step: torch.Tensor, b_step: torch.Tensor) -> torch.Tensor:
        x4, w4, a = self.conv2d_args(self.act_quant(inputs[0].to(dtype)))
        y = self.psum.conv2d(x4, self.weight_quant(w4.to(dtype)), self.qcfg.tile, a["stride"], a["padding"],
                             a["dilation"], a["groups"], x_step=a_step, w_step=b_step)
        return self._from2d(y)

    def _sum_bound(self, inputs: Inputs, dtype: torch.dtype) -> float:
        """``max|x codes| * K * 2^(w-1)``."""
        x = inputs[0]
        with torch.no_grad():
            cmax = float(self.act_quant.codes(x.detach().to(dtype)).abs().amax()) if x.numel() else 0.0
        return cmax * self._k() * 2.0 ** (self.qcfg.weight_bits - 1)

    def _calibration_items(self, inputs: Inputs) -> list[tuple[torch.Tensor, tuple[int, ...] | None]]:
        return [(inputs[0], None)]  # images, grouped by shape

    def _operand_samples(self, samples: Samples, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([s.reshape(-1) for _, s in samples]).to(dtype), self.weight.detach().to(dtype)

    def _psum_samples(self, samples: Samples) -> torch.Tensor:
        parts = [self.partials(s) for _, s in samples]
        n = parts[0].shape[0]
        if self.psum.per_channel:  # [n, B, Co, *spatial] -> [n, Co, rows, 1]: the channel at axis -3
            return torch.cat([p.transpose(1, 2).reshape(n, p.shape[2], -1, 1) for p in parts], 2)
        return torch.cat([p.reshape(n, -1) for p in parts], 1)

    def _float_forward(self, inputs: Inputs) -> torch.Tensor:
        return self._conv_forward(inputs[0], self.weight, self.bias)  # torch's own padding handling

    def _with_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias.reshape(1, -1, *([1] * self._spatial))


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` (im2col, K = Ci/groups * kh * kw) with W/A fake quantization and tiled PSUMs.

    Every ``padding_mode`` (zeros, reflect, replicate, circular) and padding form (int, tuple,
    ``"same"``, ``"valid"``) of ``nn.Conv2d``. Input ``[B, Ci, H, W]``, output ``[B, Co, Ho, Wo]``.
    """

    kind = "conv2d"
    _spatial = 2


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` (K = Ci/groups * k) with W/A fake quantization and tiled PSUMs, lowered to a
    Conv2d of height 1. Every padding mode and form of ``nn.Conv1d``. Input ``[B, Ci, L]``, output
    ``[B, Co, Lo]``."""

    kind = "conv1d"
    _spatial = 1
