"""Quantized layers that model tiled PSUM accumulation: ``QuantLinear``, ``QuantConv2d``, ``QuantMatmul``.

Each layer fake-quantizes its operands (power-of-two LSQ, W8A8 by default), splits the reduction
dimension K into ``tile``-sized steps (:mod:`apsq.psum.tiling`) and accumulates the tile partial
sums with its :class:`~apsq.nn.psum_quantizer.PSUMQuantizer`. The bias is added after the reduction
(in full precision, like the output rescale of an accelerator's post-processing unit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from apsq.errors import check_finite
from apsq.nn.config import LayerQuantConfig
from apsq.nn.psum_quantizer import PSUMQuantizer
from apsq.nn.stats import LayerStats, StatsRecorder
from apsq.psum.accumulate import saturating_accumulate
from apsq.psum.tiling import conv2d_partials, linear_partials, matmul_partials, num_tiles
from apsq.quant.lsq import LSQQuantizer

DEFAULT_CALIB_ROWS = 1024
"""Rows (tokens / pixels) of layer input kept per layer for calibration."""


class _QuantMixin:
    """Shared machinery: calibration capture, statistics, finite-input checks."""

    qcfg: LayerQuantConfig
    psum: PSUMQuantizer
    kind: str = "?"

    def _setup_common(self, qcfg: LayerQuantConfig, check: bool) -> None:
        self.qcfg = qcfg
        self.check_finite = check
        self._calib: list[torch.Tensor] | None = None
        self._calib_rows = 0
        self._recorder: StatsRecorder | None = None
        self.layer_name = ""

    # --- calibration ---------------------------------------------------------------------------
    def start_calibration(self, max_rows: int = DEFAULT_CALIB_ROWS) -> None:
        """Record (a subsample of) the inputs of the next forward passes, which run unquantized."""
        self._calib = []
        self._calib_rows = max_rows

    def _record(self, *xs: torch.Tensor) -> None:
        assert self._calib is not None
        self._calib.append(tuple(x.detach() for x in xs))

    # --- statistics ----------------------------------------------------------------------------
    def track_stats(self, on: bool = True) -> None:
        """Start (or stop) accumulating :class:`LayerStats` in ``self.stats``."""
        if on:
            self.stats = LayerStats(self.layer_name, self.kind, self.qcfg.mode, self.qcfg.gs, self._k(), self._n())
            self._recorder = StatsRecorder(self.stats, self.qcfg.psum_bits)
            self.psum.observe = self._recorder
        else:
            self._recorder = None
            self.psum.observe = None

    def _finish_output(self, y: torch.Tensor, fp: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self._recorder is not None:
            with torch.no_grad():
                self._recorder.add_error(y, fp())
        return y

    def _check(self, name: str, x: torch.Tensor) -> None:
        if self.check_finite:
            check_finite(f"input of {self.kind} layer {self.layer_name or '?'} ({name})", x)

    def _k(self) -> int:
        raise NotImplementedError

    def _n(self) -> int:
        return num_tiles(self._k(), self.qcfg.tile)


def _rows_subsample(x: torch.Tensor, k: int, max_rows: int, seed: int = 0) -> torch.Tensor:
    rows = x.reshape(-1, k)
    if rows.shape[0] <= max_rows:
        return rows
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(rows.shape[0], generator=g)[:max_rows]
    return rows[idx.to(rows.device)]


class QuantLinear(nn.Linear, _QuantMixin):
    """``nn.Linear`` with W/A fake quantization and tiled PSUM accumulation (K = in_features)."""

    kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, qcfg: LayerQuantConfig,
                 check_finite: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_common(qcfg, check_finite)
        self.act_quant = LSQQuantizer(qcfg.act_bits)
        self.weight_quant = (
            LSQQuantizer(qcfg.weight_bits, channel_axis=0, num_channels=out_features)
            if qcfg.weight_per_channel
            else LSQQuantizer(qcfg.weight_bits)
        )
        self.psum = PSUMQuantizer(self._n(), qcfg.mode, qcfg.gs, qcfg.psum_bits)
        self.to(device=device)

    @classmethod
    def from_float(cls, mod: nn.Linear, qcfg: LayerQuantConfig, check_finite: bool = True) -> QuantLinear:
        """A quantized twin of ``mod`` sharing its weight and bias parameters."""
        q = cls(mod.in_features, mod.out_features, mod.bias is not None, qcfg=qcfg, check_finite=check_finite,
                device=mod.weight.device)
        q.weight = mod.weight
        q.bias = mod.bias
        return q

    def _k(self) -> int:
        return self.in_features

    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized PSUM tiles ``[n, *x.shape[:-1], out_features]`` (no bias)."""
        return linear_partials(self.act_quant(x), self.weight_quant(self.weight), self.qcfg.tile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check("x", x)
        if self._calib is not None:
            self._record(_rows_subsample(x, self.in_features, self._calib_rows))
            return F.linear(x, self.weight, self.bias)
        y = self.accumulate(x)
        if self.bias is not None:
            y = y + self.bias
        return self._finish_output(y, lambda: F.linear(x, self.weight, self.bias))

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized reduction without bias (what :func:`apsq.integer.integer_forward` computes)."""
        if self.qcfg.mode == "none":
            if self.qcfg.acc_bits is not None:
                unit = self.act_quant.scale() * self.weight_quant.scale()  # [N] or [1]
                return saturating_accumulate(self.partials(x), unit, self.qcfg.acc_bits)
            return F.linear(self.act_quant(x), self.weight_quant(self.weight))
        return self.psum.linear(self.act_quant(x), self.weight_quant(self.weight), self.qcfg.tile,
                                x_step=self.act_quant.scale(), w_step=self.weight_quant.scale())

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Initialise activation, weight and PSUM steps from the recorded inputs."""
        rows = torch.cat([r[0] for r in self._calib], 0)[: self._calib_rows]
        self._calib = None
        self.act_quant.init_from(rows)
        self.weight_quant.init_from(self.weight)
        if self.qcfg.mode != "none":
            self.psum.init_from(self.partials(rows))


class QuantConv2d(nn.Conv2d, _QuantMixin):
    """``nn.Conv2d`` (im2col, K = Ci/groups * kh * kw) with W/A fake quantization and tiled PSUMs."""

    kind = "conv2d"

    def __init__(self, *args, qcfg: LayerQuantConfig, check_finite: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise NotImplementedError("QuantConv2d supports numeric zero padding only")
        self._setup_common(qcfg, check_finite)
        self.act_quant = LSQQuantizer(qcfg.act_bits)
        self.weight_quant = (
            LSQQuantizer(qcfg.weight_bits, channel_axis=0, num_channels=self.out_channels)
            if qcfg.weight_per_channel
            else LSQQuantizer(qcfg.weight_bits)
        )
        self.psum = PSUMQuantizer(self._n(), qcfg.mode, qcfg.gs, qcfg.psum_bits)

    @classmethod
    def from_float(cls, mod: nn.Conv2d, qcfg: LayerQuantConfig, check_finite: bool = True) -> QuantConv2d:
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None, qcfg=qcfg,
                check_finite=check_finite, device=mod.weight.device)
        q.weight = mod.weight
        q.bias = mod.bias
        return q

    def _k(self) -> int:
        return (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]

    def _fp(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized PSUM tiles ``[n, B, Co, Ho, Wo]`` (no bias)."""
        return conv2d_partials(self.act_quant(x), self.weight_quant(self.weight), self.qcfg.tile,
                               self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check("x", x)
        if self._calib is not None:
            have = sum(r[0].shape[0] for r in self._calib)
            per_image = x.shape[-1] * x.shape[-2]
            if have * per_image < self._calib_rows:
                self._record(x[: max(1, -(-self._calib_rows // per_image))])
            return self._fp(x)
        y = self.accumulate(x)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return self._finish_output(y, lambda: self._fp(x))

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized reduction without bias."""
        if self.qcfg.mode == "none":
            if self.qcfg.acc_bits is not None:
                unit = (self.act_quant.scale() * self.weight_quant.scale()).reshape(-1, 1, 1)
                return saturating_accumulate(self.partials(x), unit, self.qcfg.acc_bits)
            return F.conv2d(self.act_quant(x), self.weight_quant(self.weight), None, self.stride, self.padding,
                            self.dilation, self.groups)
        return self.psum.conv2d(self.act_quant(x), self.weight_quant(self.weight), self.qcfg.tile, self.stride,
                                self.padding, self.dilation, self.groups, x_step=self.act_quant.scale(),
                                w_step=self.weight_quant.scale())

    @torch.no_grad()
    def finish_calibration(self) -> None:
        xs = torch.cat([r[0] for r in self._calib], 0)
        self._calib = None
        self.act_quant.init_from(xs)
        self.weight_quant.init_from(self.weight)
        if self.qcfg.mode != "none":
            self.psum.init_from(self.partials(xs))


class QuantMatmul(nn.Module, _QuantMixin):
    """An activation x activation matmul (attention's ``QK^T`` or ``AV``) with tiled PSUMs.

    Both operands are quantized per tensor with ``act_bits``. ``max_k`` bounds the reduction length
    (for ``AV`` it is the sequence length), which fixes how many PSUM steps are learned.
    """

    kind = "matmul"

    def __init__(self, max_k: int, qcfg: LayerQuantConfig, check_finite: bool = True) -> None:
        super().__init__()
        self.max_k = max_k
        self._setup_common(qcfg, check_finite)
        self.a_quant = LSQQuantizer(qcfg.act_bits)
        self.b_quant = LSQQuantizer(qcfg.act_bits)
        self.psum = PSUMQuantizer(self._n(), qcfg.mode, qcfg.gs, qcfg.psum_bits)

    def _k(self) -> int:
        return self.max_k

    def partials(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return matmul_partials(self.a_quant(a), self.b_quant(b), self.qcfg.tile)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self._check("a", a)
        self._check("b", b)
        if self._recorder is not None:  # K of AV is the sequence length of this batch
            self.stats.k = a.shape[-1]
            self.stats.n_tiles = num_tiles(a.shape[-1], self.qcfg.tile)
        if self._calib is not None:
            if not self._calib:
                self._record(a, b)
            return a @ b
        return self._finish_output(self.accumulate(a, b), lambda: a @ b)

    def accumulate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The quantized ``a @ b``."""
        if self.qcfg.mode == "none":
            if self.qcfg.acc_bits is not None:
                unit = (self.a_quant.scale() * self.b_quant.scale()).reshape(())
                return saturating_accumulate(self.partials(a, b), unit, self.qcfg.acc_bits)
            return self.a_quant(a) @ self.b_quant(b)
        return self.psum.matmul(self.a_quant(a), self.b_quant(b), self.qcfg.tile, a_step=self.a_quant.scale(),
                                b_step=self.b_quant.scale())

    @torch.no_grad()
    def finish_calibration(self) -> None:
        a, b = self._calib[0]
        self._calib = None
        self.a_quant.init_from(a)
        self.b_quant.init_from(b)
        if self.qcfg.mode != "none":
            self.psum.init_from(self.partials(a, b))


QUANT_LAYER_TYPES = (QuantLinear, QuantConv2d, QuantMatmul)
