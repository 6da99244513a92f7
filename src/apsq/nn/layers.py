"""Quantized layers that model tiled PSUM accumulation.

``QuantLinear`` (``nn.Linear``), ``QuantTransposedLinear`` (Hugging Face's GPT-2 ``Conv1D``, a
Linear whose weight is stored ``[in, out]``), ``QuantConv1d`` / ``QuantConv2d`` (every padding mode
and form torch accepts) and ``QuantMatmul`` (attention's activation x activation products).

Each layer fake-quantizes its operands (power-of-two LSQ, W8A8 by default), splits the reduction
dimension K into ``tile``-sized steps (:mod:`apsq.psum.tiling`) and accumulates the tile partial
sums with its :class:`~apsq.nn.psum_quantizer.PSUMQuantizer`. The bias is added after the reduction
(in full precision, like the output rescale of an accelerator's post-processing unit).

Precision: quantization and accumulation run in float32 for float16 / bfloat16 layers (every code
and tile sum of at most 24 bits is exact there), and in float64 wherever the layer's steps could
make float32 round (:mod:`apsq.nn.exactness`); the output is cast once to the input's dtype. So
``accumulate(x)`` is the integer golden model's result (:func:`apsq.integer.integer_forward`)
rounded once to the dtype -- bit for bit equal to it whenever that result fits the dtype.

Initialisation: :func:`apsq.calibrate` (a content-keyed subsample of all calibration batches,
:mod:`apsq.nn.sampling`), or lazily before the first quantized forward, from that batch -- before
any autograd graph is built, so a checkpointed forward recomputes the same graph.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from apsq.errors import APSQError, check_finite, refuse_export
from apsq.nn.config import LAYER_FIELDS, LayerQuantConfig
from apsq.nn.exactness import work_dtype as _work_dtype
from apsq.nn.padding import current_mask, valid_rows
from apsq.nn.psum_quantizer import PSUMQuantizer
from apsq.nn.sampling import ContentSample
from apsq.nn.sharding import refuse_lazy_init
from apsq.nn.stats import LayerStats, StatsRecorder
from apsq.psum.tiling import (
    conv2d_partials,
    linear_partials,
    matmul_partials,
    num_tiles,
)
from apsq.quant.lsq import LSQQuantizer

DEFAULT_CALIB_ROWS = 1024
"""Rows (tokens / pixels) of layer input kept per layer for calibration."""

SETTINGS_FORMAT = 1
"""Version of the settings record a quantized layer keeps in its state dict (``<layer>._extra_state``)."""


def settings_record(kind: str, qcfg: LayerQuantConfig) -> dict[str, Any]:
    """The layer settings that travel with its state dict: ``{"format", "kind", "settings": {field: value}}``."""
    return {"format": SETTINGS_FORMAT, "kind": kind, "settings": {f: getattr(qcfg, f) for f in LAYER_FIELDS}}


def encode_settings(record: dict[str, Any]) -> torch.Tensor:
    """``record`` as a uint8 tensor of its JSON bytes (safetensors stores tensors only)."""
    return torch.tensor(list(json.dumps(record, sort_keys=True).encode()), dtype=torch.uint8)


def decode_settings(state: Any, where: str) -> dict[str, Any]:
    """Inverse of :func:`encode_settings` (a dict is taken as it is); :class:`APSQError` naming ``where``
    for anything else."""
    if isinstance(state, dict):
        return state
    try:
        record = json.loads(bytes(state.detach().to("cpu", torch.uint8).tolist()).decode())
    except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
        raise APSQError(f"{where}: the checkpoint's layer settings (_extra_state) are unreadable ({exc}); "
                        "it was not written by apsq's quantized layer") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise APSQError(f"{where}: the checkpoint's layer settings (_extra_state) hold {record!r}, not an apsq "
                        "settings record")
    return record


def settings_mismatch(layer: str, own: dict[str, Any], saved: dict[str, Any]) -> APSQError | None:
    """The error for a checkpoint layer whose settings differ from this model's (``None`` if equal)."""
    fields = sorted(set(own["settings"]) | set(saved["settings"]))
    diff = [f"{f} (checkpoint {saved['settings'].get(f, '<absent>')!r}, model {own['settings'].get(f, '<absent>')!r})"
            for f in fields if saved["settings"].get(f, "<absent>") != own["settings"].get(f, "<absent>")]
    if saved.get("kind") != own["kind"]:
        diff.insert(0, f"kind (checkpoint {saved.get('kind')!r}, model {own['kind']!r})")
    if not diff:
        return None
    return APSQError(
        f"layer {layer or '?'}: the checkpoint was saved with other quantization settings: {'; '.join(diff)}. "
        "Quantize the model with the checkpoint's settings (its APSQConfig) before loading; nothing was loaded "
        "into this layer"
    )


class _Calibration:
    """Content-keyed subsamples of one layer's calibration inputs, one per input shape."""

    def __init__(self, max_rows: int, rows_per_item: Callable[[tuple[int, ...]], int]) -> None:
        self.max_rows = max_rows
        self.rows_per_item = rows_per_item
        self.groups: dict[tuple[int, ...], ContentSample] = {}
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def add(self, items: torch.Tensor, key: tuple[int, ...] | None = None) -> None:
        """Offer ``items [R, ...]``; ``key`` (default: the item shape) names the group they join."""
        self.calls += 1
        if len(self.shapes) < 4:
            self.shapes.append(tuple(items.shape))
        key = tuple(items.shape[1:]) if key is None else key
        if key not in self.groups:
            per = max(1, self.rows_per_item(key))
            self.groups[key] = ContentSample(max(1, math.ceil(self.max_rows / per)))
        self.groups[key].add(items)

    def samples(self) -> list[tuple[tuple[int, ...], torch.Tensor]]:
        """``(key, kept items)`` per group, keys in sorted order (independent of arrival order)."""
        return [(k, g.tensor()) for k, g in sorted(self.groups.items()) if len(g)]

    @property
    def rows(self) -> int:
        return sum(g.offered for g in self.groups.values())


def _empty_error(layer: str, kind: str, shape: tuple[int, ...]) -> APSQError:
    return APSQError(
        f"{kind} layer {layer or '?'}: its quantization steps are not initialised and its input is empty "
        f"(shape {shape}); initialise them with apsq.calibrate(model, batches) on non-empty batches"
    )


class _QuantMixin:
    """Shared machinery: calibration capture, lazy initialisation, statistics, finite-input checks."""

    qcfg: LayerQuantConfig
    psum: PSUMQuantizer
    kind: str = "?"

    def _setup_common(self, qcfg: LayerQuantConfig, check: bool) -> None:
        self.qcfg = qcfg
        self.check_finite = check
        self._calib: _Calibration | None = None
        self._recorder: StatsRecorder | None = None
        self.layer_name = ""

    # --- settings in the state dict ------------------------------------------------------------
    def get_extra_state(self) -> torch.Tensor:
        """The layer's settings (:func:`settings_record`, JSON bytes as uint8): saved with its steps, so a
        checkpoint always says which settings its steps belong to."""
        return encode_settings(settings_record(self.kind, self.qcfg))

    def set_extra_state(self, state: Any) -> None:
        """Check a checkpoint's settings against this layer's; :class:`APSQError` naming the layer and
        every differing field (the steps of one setting are meaningless under another)."""
        where = f"{self.kind} layer {self.layer_name or '?'}"
        err = settings_mismatch(self.layer_name, settings_record(self.kind, self.qcfg), decode_settings(state, where))
        if err is not None:
            raise err

    # --- calibration ---------------------------------------------------------------------------
    def start_calibration(self, max_rows: int = DEFAULT_CALIB_ROWS) -> None:
        """Sample the inputs of the next forward passes (which run unquantized): up to ``max_rows``
        rows per input shape, chosen by content (:mod:`apsq.nn.sampling`)."""
        self._calib = _Calibration(max_rows, self._rows_per_item)

    def stop_calibration(self) -> None:
        """Drop what was recorded without changing any step."""
        self._calib = None

    @property
    def calibration_rows(self) -> int:
        """Rows (tokens / pixels / matmul rows) offered since :meth:`start_calibration`."""
        return 0 if self._calib is None else self._calib.rows

    @property
    def calibration_calls(self) -> int:
        """Forward calls since :meth:`start_calibration`."""
        return 0 if self._calib is None else self._calib.calls

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Initialise every step from the recorded sample; :class:`APSQError` if it holds no rows."""
        calib = self._calib
        if calib is None:
            raise APSQError(f"{self.kind} layer {self.layer_name or '?'}: start_calibration was not called")
        samples = calib.samples()
        if not samples:
            raise _empty_error(self.layer_name, self.kind, calib.shapes[0] if calib.shapes else ())
        self._calib = None
        self._init_steps(samples)

    def _rows_per_item(self, item_shape: tuple[int, ...]) -> int:
        return 1

    def _init_steps(self, samples: list[tuple[tuple[int, ...], torch.Tensor]]) -> None:
        """Initialise every step from ``(group key, items)`` samples."""
        raise NotImplementedError

    def _quantizers(self) -> tuple[LSQQuantizer, ...]:
        raise NotImplementedError

    def needs_init(self) -> bool:
        """Whether some step is not initialised yet (no calibration, no forward)."""
        return any(not bool(q.initialized) for q in self._quantizers()) or not bool(self.psum.initialized)

    def _ensure_initialized(self, items: torch.Tensor, key: tuple[int, ...] | None = None) -> None:
        """Lazy initialisation from this batch, before any graph is built (identical recomputation
        under activation checkpointing). Refused under ``torch.distributed`` (:mod:`apsq.nn.sharding`)."""
        if not self.needs_init():
            return
        refuse_lazy_init(self.layer_name, self.kind)
        if items.shape[0] == 0 or items.numel() == 0:
            raise _empty_error(self.layer_name, self.kind, tuple(items.shape))
        with torch.no_grad():
            self._init_steps([(tuple(items.shape[1:]) if key is None else key, items.detach())])

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
        refuse_export(f"{self.kind} layer {self.layer_name or '?'}")
        if self.check_finite:
            check_finite(f"input of {self.kind} layer {self.layer_name or '?'} ({name})", x)

    def _k(self) -> int:
        raise NotImplementedError

    def _n(self) -> int:
        return num_tiles(self._k(), self.qcfg.tile)


def _exact_under_autocast(fn: Callable) -> Callable:
    """Run a quantized reduction with ``torch.autocast`` off on the input's device.

    An autocast bf16 / fp16 matmul or convolution would round every tile sum of the fake-quantized
    operands to 8 / 11 significant bits (wrong PSUM codes); with autocast off the layer computes as it
    does outside the region, bit for bit (tests/test_devices_dtypes.py, issue 12 item 2).
    """

    @functools.wraps(fn)
    def run(self, x: torch.Tensor, *args, **kwargs):
        dev = x.device.type
        if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return fn(self, x, *args, **kwargs)
        return fn(self, x, *args, **kwargs)

    return run


def per_channel_matmul_error(name: str) -> APSQError:
    """The refusal of per-channel PSUM steps on a matmul without a fixed output width (QK^T)."""
    return APSQError(
        f"matmul layer {name or '?'}: psum_granularity 'channel' needs a fixed output width, and this "
        "product's output width is the key length; use psum_granularity 'tensor' for it (an override "
        f"{{{name!r}: {{'psum_granularity': 'tensor'}}}}) or exclude it"
    )


def _psum_quantizer(n: int, qcfg: LayerQuantConfig, channels: int | None, channel_axis: int) -> PSUMQuantizer:
    """The layer's PSUM quantizer: per tensor, or per tile step and output channel."""
    gran = getattr(qcfg, "psum_granularity", "tensor")
    if gran == "tensor" or qcfg.mode == "none":
        return PSUMQuantizer(n, qcfg.mode, qcfg.gs, qcfg.psum_bits, acc_bits=qcfg.acc_bits)
    return PSUMQuantizer(n, qcfg.mode, qcfg.gs, qcfg.psum_bits, granularity=gran, channels=int(channels),
                         channel_axis=channel_axis)


def _make_quantizers(layer: _QuantMixin, qcfg: LayerQuantConfig, channels: int, dtype: torch.dtype | None,
                     device, channel_axis: int = -1) -> None:
    layer.act_quant = LSQQuantizer(qcfg.act_bits)
    layer.weight_quant = (
        LSQQuantizer(qcfg.weight_bits, channel_axis=0, num_channels=channels)
        if qcfg.weight_per_channel
        else LSQQuantizer(qcfg.weight_bits)
    )
    layer.psum = _psum_quantizer(layer._n(), qcfg, channels, channel_axis)
    for q in (layer.act_quant, layer.weight_quant, layer.psum):
        q.to(device=device, dtype=dtype)  # the layer's device; step parameters stay float32 (issue 25 item 1)


class QuantLinear(nn.Linear, _QuantMixin):
    """``nn.Linear`` with W/A fake quantization and tiled PSUM accumulation (K = in_features).

    Input ``[..., K]``, output ``[..., N]`` in the input's dtype.
    """

    kind = "linear"
    act_quant: LSQQuantizer  # set by _make_quantizers
    weight_quant: LSQQuantizer
    get_extra_state = _QuantMixin.get_extra_state  # nn.Module's (no state) comes first in the MRO
    set_extra_state = _QuantMixin.set_extra_state

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, qcfg: LayerQuantConfig,
                 check_finite: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_common(qcfg, check_finite)
        _make_quantizers(self, qcfg, out_features, dtype, device)

    @classmethod
    def from_float(cls, mod: nn.Linear, qcfg: LayerQuantConfig, check_finite: bool = True) -> QuantLinear:
        """A quantized twin of ``mod`` sharing its weight and bias parameters (and dtype, device)."""
        q = cls(mod.in_features, mod.out_features, mod.bias is not None, qcfg=qcfg, check_finite=check_finite,
                device=mod.weight.device, dtype=mod.weight.dtype)
        q.weight = mod.weight
        q.bias = mod.bias
        return q

    def linear_weight(self) -> torch.Tensor:
        """The weight as ``[N, K]`` (``out_features x in_features``)."""
        return self.weight

    def _k(self) -> int:
        return self.in_features

    def _quantizers(self) -> tuple[LSQQuantizer, ...]:
        return (self.act_quant, self.weight_quant)

    def _operands(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dt = dtype or _work_dtype(x.dtype)
        return self.act_quant(x.to(dt)), self.weight_quant(self.linear_weight().to(dt))

    @_exact_under_autocast
    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized PSUM tiles ``[n, *x.shape[:-1], out_features]`` (no bias; float32 or wider)."""
        xq, wq = self._operands(x)
        return linear_partials(xq, wq, self.qcfg.tile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check("x", x)
        if self._calib is not None:  # rows of real tokens only (apsq.nn.padding)
            self._calib.add(valid_rows(x.detach()))
            return F.linear(x, self.linear_weight(), self.bias)
        if self.needs_init():
            self._ensure_initialized(valid_rows(x))
        y = self.accumulate(x)
        if self.bias is not None:
            y = y + self.bias
        return self._finish_output(y, lambda: F.linear(x, self.linear_weight(), self.bias))

    def _sum_bound(self, x: torch.Tensor, dt: torch.dtype) -> float:
        """``max_row sum|x codes| * 2^(w-1)``: a bound on every running sum of the exact reduction, in units."""
        with torch.no_grad():
            codes = self.act_quant.codes(x.detach().to(dt).reshape(-1, self.in_features))
            row = float(codes.abs().sum(1).amax()) if codes.numel() else 0.0
        return row * 2.0 ** (self.qcfg.weight_bits - 1)

    @_exact_under_autocast
    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized reduction without bias (what :func:`apsq.integer.integer_forward` computes,
        rounded once to ``x.dtype``)."""
        q = self.qcfg
        dt = self.psum.work_dtype(
            x.dtype, self.layer_name, k=self.in_features, tile=q.tile, a_bits=q.act_bits, b_bits=q.weight_bits,
            unit_exponent=lambda: self.act_quant.exponent().reshape(()) + self.weight_quant.exponent().reshape(-1),
            sum_bound=lambda d: self._sum_bound(x, d))
        xq, wq = self._operands(x, dt)
        y = self.psum.linear(xq, wq, q.tile, x_step=self.act_quant.scale().to(dt),
                             w_step=self.weight_quant.scale().to(dt))
        return y.to(x.dtype)

    @torch.no_grad()
    def _init_steps(self, samples: list[tuple[tuple[int, ...], torch.Tensor]]) -> None:
        rows = torch.cat([s.reshape(-1, self.in_features) for _, s in samples], 0)
        dt = _work_dtype(rows.dtype)
        rows = rows.to(dt)
        self.act_quant.init_from(rows)
        self.weight_quant.init_from(self.linear_weight().detach().to(dt))
        if self.psum.learns_steps:
            self.psum.init_from(self.partials(rows))


class QuantTransposedLinear(QuantLinear):
    """Hugging Face's ``Conv1D`` (GPT-2, GPT, ...): a Linear whose weight is stored ``[in, out]``
    (``y = x @ W + b``); quantized as the Linear ``W^T`` (per-channel steps per output feature)."""

    @classmethod
    def from_float(cls, mod: nn.Module, qcfg: LayerQuantConfig, check_finite: bool = True) -> QuantTransposedLinear:
        """A quantized twin of a ``transformers.pytorch_utils.Conv1D`` sharing its parameters."""
        k, n = mod.weight.shape
        q = cls(k, n, mod.bias is not None, qcfg=qcfg, check_finite=check_finite, device=mod.weight.device,
                dtype=mod.weight.dtype)
        q.weight = mod.weight
        q.bias = mod.bias
        q.nf, q.nx = n, k
        return q

    def linear_weight(self) -> torch.Tensor:
        return self.weight.t()


class _QuantConvNd(_QuantMixin):
    """Shared by :class:`QuantConv1d` / :class:`QuantConv2d`: padding, 2-D lowering, calibration."""

    _spatial = 2
    act_quant: LSQQuantizer  # set by _make_quantizers
    weight_quant: LSQQuantizer

    def __init__(self, *args, qcfg: LayerQuantConfig, check_finite: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the nn.Conv1d / nn.Conv2d of the concrete class
        self._setup_conv(qcfg, check_finite, kwargs.get("device"), kwargs.get("dtype"))

    @classmethod
    def from_float(cls, mod: nn.Module, qcfg: LayerQuantConfig, check_finite: bool = True) -> _QuantConvNd:
        """A quantized twin of the float conv ``mod`` sharing its parameters (padding mode, dtype and
        device kept)."""
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None, padding_mode=mod.padding_mode,
                qcfg=qcfg, check_finite=check_finite, device=mod.weight.device, dtype=mod.weight.dtype)
        q.weight = mod.weight
        q.bias = mod.bias
        return q

    def _setup_conv(self, qcfg: LayerQuantConfig, check: bool, device, dtype) -> None:
        self._setup_common(qcfg, check)
        _make_quantizers(self, qcfg, self.out_channels, dtype, device, channel_axis=-3)  # [B, Co, Ho, Wo]

    def _k(self) -> int:
        return (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def _quantizers(self) -> tuple[LSQQuantizer, ...]:
        return (self.act_quant, self.weight_quant)

    def _rows_per_item(self, item_shape: tuple[int, ...]) -> int:
        return math.prod(item_shape[1:])  # pixels of one image

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

    def conv2d_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(x4 [B, C, H, W], w4 [Co, Ci/g, kh, kw], dict(stride, padding, dilation, groups))``: the
        padded input and weight as a Conv2d (a Conv1d is a Conv2d of height 1)."""
        xp, pad = self.pad_input(x)
        w = self.weight
        if self._spatial == 1:
            return xp.unsqueeze(2), w.unsqueeze(2), {"stride": (1, self.stride[0]), "padding": (0, pad[0]),
                                                         "dilation": (1, self.dilation[0]), "groups": self.groups}
        return xp, w, {"stride": tuple(self.stride), "padding": pad, "dilation": tuple(self.dilation), "groups": self.groups}

    def _from2d(self, y: torch.Tensor) -> torch.Tensor:
        return y.squeeze(2) if self._spatial == 1 else y

    def _fp(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias)  # torch's own padding handling

    @_exact_under_autocast
    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized PSUM tiles ``[n, B, Co, *spatial_out]`` (no bias; float32 or wider)."""
        dt = _work_dtype(x.dtype)
        x4, w4, a = self.conv2d_args(self.act_quant(x.to(dt)))
        p = conv2d_partials(x4, self.weight_quant(w4.to(dt)), self.qcfg.tile, a["stride"], a["padding"],
                            a["dilation"], a["groups"])
        return p.squeeze(3) if self._spatial == 1 else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check("x", x)
        if self._calib is not None:
            self._calib.add(x.detach())
            return self._fp(x)
        self._ensure_initialized(x)
        y = self.accumulate(x)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, *([1] * self._spatial))
        return self._finish_output(y, lambda: self._fp(x))

    def _sum_bound(self, x: torch.Tensor, dt: torch.dtype) -> float:
        """``max|x codes| * K * 2^(w-1)``: a bound on every running sum of the exact reduction, in units."""
        with torch.no_grad():
            cmax = float(self.act_quant.codes(x.detach().to(dt)).abs().amax()) if x.numel() else 0.0
        return cmax * self._k() * 2.0 ** (self.qcfg.weight_bits - 1)

    @_exact_under_autocast
    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized reduction without bias, ``[B, Co, *spatial_out]`` in ``x.dtype``."""
        q = self.qcfg
        dt = self.psum.work_dtype(
            x.dtype, self.layer_name, k=self._k(), tile=q.tile, a_bits=q.act_bits, b_bits=q.weight_bits,
            unit_exponent=lambda: self.act_quant.exponent().reshape(()) + self.weight_quant.exponent().reshape(-1),
            sum_bound=lambda d: self._sum_bound(x, d))
        x4, w4, a = self.conv2d_args(self.act_quant(x.to(dt)))
        w4 = self.weight_quant(w4.to(dt))
        y = self.psum.conv2d(x4, w4, q.tile, a["stride"], a["padding"], a["dilation"], a["groups"],
                             x_step=self.act_quant.scale().to(dt), w_step=self.weight_quant.scale().to(dt))
        return self._from2d(y).to(x.dtype)

    @torch.no_grad()
    def _init_steps(self, samples: list[tuple[tuple[int, ...], torch.Tensor]]) -> None:
        dt = _work_dtype(samples[0][1].dtype)
        self.act_quant.init_from(torch.cat([s.reshape(-1) for _, s in samples]).to(dt))
        self.weight_quant.init_from(self.weight.detach().to(dt))
        if self.psum.learns_steps:
            parts = [self.partials(s) for _, s in samples]
            n = parts[0].shape[0]
            if self.psum.per_channel:  # [n, B, Co, *spatial] -> [n, Co, rows, 1]: the channel at axis -3
                self.psum.init_from(torch.cat([p.transpose(1, 2).reshape(n, p.shape[2], -1, 1) for p in parts], 2))
            else:
                self.psum.init_from(torch.cat([p.reshape(n, -1) for p in parts], 1))


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


class QuantMatmul(nn.Module, _QuantMixin):
    """An activation x activation matmul (attention's ``QK^T`` or ``AV``) with tiled PSUMs.

    Both operands are quantized per tensor with ``act_bits``. ``max_k`` bounds the reduction length
    (for ``AV`` it is the sequence length), which fixes how many PSUM steps are learned.
    ``a [..., M, K] @ b [..., K, N] -> [..., M, N]`` in ``a``'s dtype.
    """

    kind = "matmul"
    get_extra_state = _QuantMixin.get_extra_state  # nn.Module's (no state) comes first in the MRO
    set_extra_state = _QuantMixin.set_extra_state

    def __init__(self, max_k: int, qcfg: LayerQuantConfig, check_finite: bool = True, *,
                 out_features: int | None = None, name: str = "") -> None:
        if (getattr(qcfg, "psum_granularity", "tensor") == "channel" and qcfg.mode != "none"
                and out_features is None):
            raise per_channel_matmul_error(name)
        super().__init__()
        self.max_k = max_k
        self.positions: tuple[str, ...] = ()
        """Axes of ``a @ b`` that are token positions (``"m"``, ``"k"``, ``"n"``): cropped to the real
        tokens of each sentence for calibration (:meth:`_pair_groups`); set by the attention hook."""
        self._setup_common(qcfg, check_finite)
        self.layer_name = name
        self.a_quant = LSQQuantizer(qcfg.act_bits)
        self.b_quant = LSQQuantizer(qcfg.act_bits)
        self.psum = _psum_quantizer(self._n(), qcfg, out_features, -1)

    def _k(self) -> int:
        return self.max_k

    def _quantizers(self) -> tuple[LSQQuantizer, ...]:
        return (self.a_quant, self.b_quant)

    def _rows_per_item(self, key: tuple[int, ...]) -> int:
        return key[0]  # rows M of one (a, b) pair; key = (M, K, N)

    def _operands(self, a: torch.Tensor, b: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a_quant(a.to(dt)), self.b_quant(b.to(dt))

    @_exact_under_autocast
    def partials(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Quantized PSUM tiles ``[n, ..., M, N]`` (float32 or wider)."""
        return matmul_partials(*self._operands(a, b, _work_dtype(a.dtype)), self.qcfg.tile)

    @staticmethod
    def _pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One item per (broadcast) leading index: ``[R, M + N, K]`` holding ``a`` and ``b^T``, and
        the group key ``(M, K, N)``."""
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a3 = a.detach().expand(*lead, m, k).reshape(-1, m, k)
        b3 = b.detach().to(a.dtype).expand(*lead, k, n).reshape(-1, k, n).transpose(1, 2)
        return torch.cat([a3, b3], 1), (m, k, n)

    def _pair_groups(self, a: torch.Tensor, b: torch.Tensor) -> list[tuple[torch.Tensor, tuple[int, int, int]]]:
        """:meth:`_pairs` of the whole batch, or -- inside a model call with a padding mask
        (:mod:`apsq.nn.padding`) and :attr:`positions` set -- of each sentence cropped to its real tokens
        along the axes in :attr:`positions` (``"m"`` rows, ``"k"`` reduction, ``"n"`` columns) whose
        length is the mask's."""
        mask = current_mask()
        if not self.positions or mask is None or a.dim() != 4 or a.shape[0] != mask.shape[0]:
            return [self._pairs(a, b)]
        s = mask.shape[1]
        groups = []
        for i in range(a.shape[0]):
            idx = mask[i].nonzero().squeeze(1).to(a.device)
            ai, bi = a[i:i + 1], (b[i:i + 1] if b.shape[0] == a.shape[0] else b)
            if "m" in self.positions and ai.shape[-2] == s:
                ai = ai.index_select(-2, idx)
            if "k" in self.positions and ai.shape[-1] == s and bi.shape[-2] == s:
                ai, bi = ai.index_select(-1, idx), bi.index_select(-2, idx)
            if "n" in self.positions and bi.shape[-1] == s:
                bi = bi.index_select(-1, idx)
            groups.append(self._pairs(ai, bi))
        return groups

    @staticmethod
    def _split(key: tuple[int, ...], items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`_pairs`: ``a [R, M, K]``, ``b [R, K, N]``."""
        m = key[0]
        return items[:, :m], items[:, m:].transpose(1, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self._check("a", a)
        self._check("b", b)
        if self._recorder is not None:  # K of AV is the sequence length of this batch
            self.stats.k = a.shape[-1]
            self.stats.n_tiles = num_tiles(a.shape[-1], self.qcfg.tile)
        if self._calib is not None:
            for items, key in self._pair_groups(a, b):
                self._calib.add(items, key)
            return a @ b
        if self.needs_init():
            groups = self._pair_groups(a, b)
            if any(items.numel() == 0 for items, _ in groups):
                raise _empty_error(self.layer_name, self.kind, tuple(a.shape))
            with torch.no_grad():
                self._init_steps([(key, items.detach()) for items, key in groups])
        return self._finish_output(self.accumulate(a, b), lambda: a @ b)

    def _sum_bound(self, a: torch.Tensor, b: torch.Tensor, dt: torch.dtype) -> float:
        """``max|a codes| * max|b codes| * K``: a bound on every running sum of the exact product, in units."""
        with torch.no_grad():
            ca = float(self.a_quant.codes(a.detach().to(dt)).abs().amax()) if a.numel() else 0.0
            cb = float(self.b_quant.codes(b.detach().to(dt)).abs().amax()) if b.numel() else 0.0
        return ca * cb * a.shape[-1]

    @_exact_under_autocast
    def accumulate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The quantized ``a @ b`` (in ``a.dtype``)."""
        q = self.qcfg
        dt = self.psum.work_dtype(
            a.dtype, self.layer_name, k=a.shape[-1], tile=q.tile, a_bits=q.act_bits, b_bits=q.act_bits,
            unit_exponent=lambda: (self.a_quant.exponent() + self.b_quant.exponent()).reshape(()),
            sum_bound=lambda d: self._sum_bound(a, b, d))
        aq, bq = self._operands(a, b, dt)
        y = self.psum.matmul(aq, bq, q.tile, a_step=self.a_quant.scale().to(dt), b_step=self.b_quant.scale().to(dt))
        return y.to(a.dtype)

    @torch.no_grad()
    def _init_steps(self, samples: list[tuple[tuple[int, ...], torch.Tensor]]) -> None:
        """Operand steps from every kept pair; PSUM steps from their tiles (pairs with fewer tiles
        than the longest contribute zero tiles beyond their end)."""
        dt = _work_dtype(samples[0][1].dtype)
        pairs = [self._split(key, s) for key, s in samples]
        self.a_quant.init_from(torch.cat([a.reshape(-1) for a, _ in pairs]).to(dt))
        self.b_quant.init_from(torch.cat([b.reshape(-1) for _, b in pairs]).to(dt))
        if not self.psum.learns_steps:
            return
        parts = [self.partials(a, b) for a, b in pairs]
        n = max(p.shape[0] for p in parts)
        lane = parts[0].shape[-1] if self.psum.per_channel else 1  # per-channel steps keep the output columns
        flat = [torch.cat([p.reshape(p.shape[0], -1, lane), p.new_zeros(n - p.shape[0], p[0].numel() // lane, lane)], 0)
                for p in parts]
        self.psum.init_from(torch.cat(flat, 1) if self.psum.per_channel else torch.cat(flat, 1).squeeze(-1))


QUANT_LAYER_TYPES = (QuantLinear, QuantConv1d, QuantConv2d, QuantMatmul)
QuantLayer: TypeAlias = QuantLinear | QuantConv1d | QuantConv2d | QuantMatmul  # one of QUANT_LAYER_TYPES
