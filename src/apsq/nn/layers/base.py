"""The template every quantized layer runs: one forward, one accumulation, one step initialisation.

A layer kind (:mod:`~apsq.nn.layers.linear`, :mod:`~apsq.nn.layers.conv`, :mod:`~apsq.nn.layers.matmul`)
supplies only what differs -- how its two operands are quantized, shaped and handed to the PSUM
accumulation -- through the hooks of :class:`QuantLayerBase`; the flow is here:

* ``forward(*inputs)``: check the inputs; while calibrating, sample them and return the float result;
  else initialise lazily if needed, :meth:`~QuantLayerBase.accumulate`, add the bias, record statistics;
* ``accumulate(*inputs)``: pick the float dtype in which the accumulation is exact
  (:meth:`PSUMQuantizer.work_dtype <apsq.nn.psum_quantizer.PSUMQuantizer.work_dtype>`, bounds in
  :mod:`apsq.nn.exactness`), quantize the operands in it and let the layer's
  :class:`~apsq.nn.psum_quantizer.PSUMQuantizer` accumulate them -- in every mode (``none`` exact or
  saturating at ``acc_bits``, ``psq``, ``apsq``): no layer branches on the mode;
* ``_init_steps(samples)``: both operand steps from the sampled inputs, then the PSUM steps (where
  the mode learns them) from the tiles of those samples.

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
import math
from collections.abc import Callable
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import torch
from torch import nn

from apsq.errors import APSQError, check_finite, refuse_export
from apsq.nn.config import LayerQuantConfig
from apsq.nn.exactness import work_dtype
from apsq.nn.layers.settings import decode_settings, encode_settings, settings_mismatch, settings_record
from apsq.nn.psum_quantizer import PSUMQuantizer
from apsq.nn.sampling import ContentSample
from apsq.nn.sharding import refuse_lazy_init
from apsq.nn.stats import LayerStats, StatsRecorder
from apsq.psum.tiling import num_tiles
from apsq.quant.lsq import LSQQuantizer

__all__ = ["DEFAULT_CALIB_ROWS", "QuantLayerBase", "WeightedQuantLayer", "exact_under_autocast"]

DEFAULT_CALIB_ROWS = 1024
"""Rows (tokens / pixels) of layer input kept per layer for calibration."""

Inputs = tuple[torch.Tensor, ...]
"""A layer's inputs as the template passes them to the hooks: ``(x,)``, or ``(a, b)`` for a matmul."""

Samples = list[tuple[tuple[int, ...], torch.Tensor]]
"""``(group key, items [R, ...])`` per calibration group: what :meth:`QuantLayerBase._init_steps` takes."""

_S = TypeVar("_S")
_P = ParamSpec("_P")


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
        if len(self.shapes) < 4:
            self.shapes.append(tuple(items.shape))
        key = tuple(items.shape[1:]) if key is None else key
        if key not in self.groups:
            per = max(1, self.rows_per_item(key))
            self.groups[key] = ContentSample(max(1, math.ceil(self.max_rows / per)))
        self.groups[key].add(items)

    def samples(self) -> Samples:
        """``(key, kept items)`` per group, keys in sorted order (independent of arrival order)."""
        return [(k, t) for k, g in sorted(self.groups.items()) if (t := g.tensor()) is not None and len(t)]

    @property
    def rows(self) -> int:
        return sum(g.offered for g in self.groups.values())


def _empty_error(layer: str, kind: str, shape: tuple[int, ...]) -> APSQError:
    return APSQError(
        f"{kind} layer {layer or '?'}: its quantization steps are not initialised and its input is empty "
        f"(shape {shape}); initialise them with apsq.calibrate(model, batches) on non-empty batches"
    )


def exact_under_autocast(
    fn: Callable[Concatenate[_S, torch.Tensor, _P], torch.Tensor],
) -> Callable[Concatenate[_S, torch.Tensor, _P], torch.Tensor]:
    """Run a quantized reduction with ``torch.autocast`` off on the input's device.

    An autocast bf16 / fp16 matmul or convolution would round every tile sum of the fake-quantized
    operands to 8 / 11 significant bits (wrong PSUM codes); with autocast off the layer computes as it
    does outside the region, bit for bit (tests/test_devices_dtypes.py, issue 12 item 2).
    """

    @functools.wraps(fn)
    def run(self: _S, x: torch.Tensor, /, *args: _P.args, **kwargs: _P.kwargs) -> torch.Tensor:
        dev = x.device.type
        if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return fn(self, x, *args, **kwargs)
        return fn(self, x, *args, **kwargs)

    return run


def psum_quantizer(n: int, qcfg: LayerQuantConfig, channels: int, channel_axis: int) -> PSUMQuantizer:
    """The layer's PSUM quantizer: per tensor (mode ``none``: with its ``acc_bits``), or per tile step
    and output channel (``channels`` along ``channel_axis`` of one output tile)."""
    gran = getattr(qcfg, "psum_granularity", "tensor")
    if gran == "tensor" or qcfg.mode == "none":
        return PSUMQuantizer(n, qcfg.mode, qcfg.gs, qcfg.psum_bits, acc_bits=qcfg.acc_bits)
    return PSUMQuantizer(n, qcfg.mode, qcfg.gs, qcfg.psum_bits, granularity=gran, channels=channels,
                         channel_axis=channel_axis)


class QuantLayerBase(nn.Module):
    """The template of a quantized layer of two operands (see the module docstring for the flow).

    A kind mixes it in before its torch layer (``class QuantLinear(WeightedQuantLayer, nn.Linear)``), so
    the template's :meth:`get_extra_state` / :meth:`set_extra_state` (the settings record) come first,
    and supplies the hooks below. Its public ``forward`` (typed with the kind's own arguments) calls
    :meth:`_forward`; :meth:`accumulate` is the template's own, called through the instance (so an
    instance may shadow it: :mod:`apsq.deploy.runner` runs the engine path that way).

    Hooks (``inputs``: the layer's inputs as a tuple):
        :meth:`_quantizers`: the two operand quantizers ``(first, second)``;
        :meth:`_k`, :meth:`_reduction_length`: the reduction length K (fixed / of these inputs);
        :meth:`_reduce`: quantize the operands in ``dtype`` and accumulate them with :attr:`psum`;
        :meth:`_sum_bound`: a bound on every running sum of the exact reduction, in units ``s_a * s_b``;
        :meth:`_calibration_items`: the inputs as calibration items ``[R, ...]`` with their group key;
        :meth:`_operand_samples`, :meth:`_psum_samples`: what the steps are initialised from;
        :meth:`_float_forward`, :meth:`_with_bias`: the float result, and the bias added to a reduction.
    """

    kind: ClassVar[str] = "?"
    qcfg: LayerQuantConfig
    psum: PSUMQuantizer
    stats: LayerStats
    layer_name: str
    check_finite: bool

    def _setup_common(self, qcfg: LayerQuantConfig, check: bool) -> None:
        self.qcfg = qcfg
        self.check_finite = check
        self._calib: _Calibration | None = None
        self._recorder: StatsRecorder | None = None
        self.layer_name = ""

    # --- hooks (the layer kinds supply them) ----------------------------------------------------
    def _quantizers(self) -> tuple[LSQQuantizer, LSQQuantizer]:
        raise NotImplementedError

    def _k(self) -> int:
        """The reduction length K the layer is built for (its PSUM steps: ``ceil(K / tile)``)."""
        raise NotImplementedError

    def _reduction_length(self, inputs: Inputs) -> int:
        """K of these inputs (a matmul's may be shorter than :meth:`_k`)."""
        return self._k()

    def _reduce(self, inputs: Inputs, dtype: torch.dtype, a_step: torch.Tensor, b_step: torch.Tensor) -> torch.Tensor:
        """The operands quantized in ``dtype`` and accumulated by :attr:`psum` (steps: the operand
        quantizers' ``scale()`` in ``dtype``), shaped as the layer's output."""
        raise NotImplementedError

    def _sum_bound(self, inputs: Inputs, dtype: torch.dtype) -> float:
        raise NotImplementedError

    def _calibration_items(self, inputs: Inputs) -> list[tuple[torch.Tensor, tuple[int, ...] | None]]:
        """``(items [R, ...], group key or None for the item shape)`` of these inputs."""
        raise NotImplementedError

    def _operand_samples(self, samples: Samples, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """What the two operand steps are initialised from (in ``dtype``)."""
        raise NotImplementedError

    def _psum_samples(self, samples: Samples) -> torch.Tensor:
        """The tiles the PSUM steps are initialised from (:meth:`PSUMQuantizer.init_from
        <apsq.nn.psum_quantizer.PSUMQuantizer.init_from>`)."""
        raise NotImplementedError

    def _float_forward(self, inputs: Inputs) -> torch.Tensor:
        raise NotImplementedError

    def _with_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def _rows_per_item(self, item_shape: tuple[int, ...]) -> int:
        return 1

    # --- the template ---------------------------------------------------------------------------
    @torch.compiler.disable  # under torch.compile each quantized layer runs eagerly (a graph break around it)
    def _forward(self, inputs: Inputs, names: tuple[str, ...]) -> torch.Tensor:
        if any(t.is_meta for t in inputs):  # shapes only (apsq.hw.workloads.trace on the meta device): no values
            return self._float_forward(inputs)  # to check, calibrate or quantize; the float path gives the shape
        for name, t in zip(names, inputs, strict=True):
            self._check(name, t)
        if self._recorder is not None:  # K of attention's AV is the sequence length of this batch
            k = self._reduction_length(inputs)
            self.stats.k, self.stats.n_tiles = k, num_tiles(k, self.qcfg.tile)
        if self._calib is not None:
            self._calib.calls += 1
            for items, key in self._calibration_items(inputs):
                self._calib.add(items.detach(), key)
            return self._float_forward(inputs)
        if self.needs_init():
            self._lazy_init(inputs)
        y = self._with_bias(self.accumulate(*inputs))  # an instance's own accumulate wins (apsq.deploy.runner)
        return self._finish_output(y, lambda: self._float_forward(inputs))

    @exact_under_autocast
    def accumulate(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The quantized reduction without bias, in ``inputs[0].dtype``: what
        :func:`apsq.integer.integer_forward` computes, rounded once to that dtype (see the module docstring).

        ``accumulate(x)`` of a Linear ``[..., K] -> [..., N]`` or a Conv ``[B, Ci, *spatial] -> [B, Co,
        *spatial_out]``; ``accumulate(a, b)`` of a matmul ``[..., M, K] @ [..., K, N] -> [..., M, N]``.
        """
        qa, qb = self._quantizers()
        dt = self.psum.work_dtype(
            inputs[0].dtype, self.layer_name, k=self._reduction_length(inputs), tile=self.qcfg.tile,
            a_bits=qa.bits, b_bits=qb.bits,
            unit_exponent=lambda: qa.exponent().reshape(()) + qb.exponent().reshape(-1),
            sum_bound=lambda d: self._sum_bound(inputs, d))
        y = self._reduce(inputs, dt, qa.scale().to(dt), qb.scale().to(dt))
        return y.to(inputs[0].dtype)

    @torch.no_grad()
    def _init_steps(self, samples: Samples) -> None:
        """Initialise every step from ``(group key, items)`` samples: the operands', then the PSUM
        steps from the tiles of the quantized samples (where the mode learns them)."""
        qa, qb = self._quantizers()
        a, b = self._operand_samples(samples, work_dtype(samples[0][1].dtype))
        qa.init_from(a)
        qb.init_from(b)
        if self.psum.learns_steps:
            self.psum.init_from(self._psum_samples(samples))

    def _lazy_init(self, inputs: Inputs) -> None:
        """Lazy initialisation from this batch, before any graph is built (identical recomputation
        under activation checkpointing). Refused under ``torch.distributed`` (:mod:`apsq.nn.sharding`)."""
        refuse_lazy_init(self.layer_name, self.kind)
        groups = self._calibration_items(inputs)
        if any(items.shape[0] == 0 or items.numel() == 0 for items, _ in groups):
            raise _empty_error(self.layer_name, self.kind, tuple(inputs[0].shape))
        with torch.no_grad():
            self._init_steps([(tuple(items.shape[1:]) if key is None else key, items.detach())
                              for items, key in groups])

    def needs_init(self) -> bool:
        """Whether some step is not initialised yet (no calibration, no forward)."""
        return any(not bool(q.initialized) for q in self._quantizers()) or not bool(self.psum.initialized)

    def _n(self) -> int:
        return num_tiles(self._k(), self.qcfg.tile)

    # --- settings in the state dict ------------------------------------------------------------
    def get_extra_state(self) -> torch.Tensor:
        """The layer's settings (:func:`~apsq.nn.layers.settings.settings_record`, JSON bytes as uint8):
        saved with its steps, so a checkpoint always says which settings its steps belong to."""
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


class WeightedQuantLayer(QuantLayerBase):
    """A layer of an activation and a weight (Linear, Conv): ``act_quant`` (per tensor) and
    ``weight_quant`` (per tensor, or per output channel with ``weight_per_channel``)."""

    act_quant: LSQQuantizer
    weight_quant: LSQQuantizer

    def _setup_weighted(self, qcfg: LayerQuantConfig, check: bool, channels: int, dtype: torch.dtype | None,
                        device: torch.device | str | None, channel_axis: int = -1) -> None:
        """The common state, the operand quantizers and the PSUM quantizer (``channels`` output channels
        along ``channel_axis`` of one output tile), on the layer's device; steps stay float32."""
        self._setup_common(qcfg, check)
        self.act_quant = LSQQuantizer(qcfg.act_bits)
        self.weight_quant = (
            LSQQuantizer(qcfg.weight_bits, channel_axis=0, num_channels=channels)
            if qcfg.weight_per_channel
            else LSQQuantizer(qcfg.weight_bits)
        )
        self.psum = psum_quantizer(self._n(), qcfg, channels, channel_axis)
        for q in (self.act_quant, self.weight_quant, self.psum):
            q.to(device=device, dtype=dtype)  # the layer's device; step parameters stay float32 (issue 25 item 1)

    def _quantizers(self) -> tuple[LSQQuantizer, LSQQuantizer]:
        return (self.act_quant, self.weight_quant)
