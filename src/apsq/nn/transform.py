"""``quantize_(model, config)``: swap layers for their PSUM-aware quantized twins, in place."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from apsq.errors import APSQError
from apsq.nn.attention import attach_attention_matmuls, is_supported_attention
from apsq.nn.config import APSQConfig
from apsq.nn.layers import DEFAULT_CALIB_ROWS, QUANT_LAYER_TYPES, QuantConv2d, QuantLinear
from apsq.nn.stats import LayerStats

_SWAPS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "linear": (nn.Linear, QuantLinear),
    "conv2d": (nn.Conv2d, QuantConv2d),
}


def quantize_(model: nn.Module, config: APSQConfig | None = None) -> nn.Module:
    """Replace ``nn.Linear`` / ``nn.Conv2d`` (and, if asked, attention matmuls) in ``model`` in place.

    Quantized layers share the original parameters. Their step sizes are initialised by
    :func:`calibrate` (or lazily from the first batch). Returns ``model``.
    """
    config = config or APSQConfig()
    if not isinstance(config, APSQConfig):
        raise APSQError(f"config must be an APSQConfig, got {type(config).__name__}")
    if isinstance(model, QUANT_LAYER_TYPES):
        raise APSQError("model is already a quantized layer; pass its parent")
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            for t in config.layer_types:
                float_cls, quant_cls = _SWAPS[t]
                if type(child) is float_cls:
                    lcfg = config.for_module(full)
                    if lcfg.enabled:
                        q = quant_cls.from_float(child, lcfg, config.check_finite)
                        q.layer_name = full
                        setattr(module, child_name, q)
        if config.attention_matmuls and is_supported_attention(module):
            qk = config.for_module(f"{name}.qk_matmul")
            av = config.for_module(f"{name}.av_matmul")
            if qk.enabled or av.enabled:
                attach_attention_matmuls(module, qk, av, config.check_finite)
                module.apsq_qk.layer_name = f"{name}.qk_matmul"
                module.apsq_av.layer_name = f"{name}.av_matmul"
                for q, c in ((module.apsq_qk, qk), (module.apsq_av, av)):
                    if not c.enabled:  # keep exact (mode none, 16-bit operands would still quantize)
                        q.qcfg = c.__class__(**{**c.__dict__, "enabled": True, "mode": "none"})
    return model


def quant_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` for every quantized layer of ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, QUANT_LAYER_TYPES):
            yield name, m


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] = _default_forward,
    max_rows: int = DEFAULT_CALIB_ROWS,
) -> nn.Module:
    """Initialise every step size from a few batches.

    The batches run once through the model in full precision while each quantized layer keeps a
    subsample of its inputs (``max_rows`` rows); then activation and weight steps are set to their
    MSE-optimal powers of two and the PSUM steps greedily along the accumulation
    (:meth:`~apsq.nn.psum_quantizer.PSUMQuantizer.init_from`).
    """
    layers = [m for _, m in quant_layers(model)]
    if not layers:
        raise APSQError("calibrate: the model has no quantized layers (call apsq.quantize_ first)")
    was_training = model.training
    model.eval()
    for m in layers:
        m.start_calibration(max_rows)
    seen = 0
    try:
        for batch in batches:
            forward(model, batch)
            seen += 1
    finally:
        if seen == 0:
            for m in layers:
                m._calib = None
    if seen == 0:
        raise APSQError("calibrate: batches was empty; give at least one batch")
    for m in layers:
        if m._calib:
            m.finish_calibration()
        else:  # never called (e.g. an unused head): lazy init on first use
            m._calib = None
    model.train(was_training)
    return model


@contextmanager
def track_stats(model: nn.Module) -> Iterator[list[LayerStats]]:
    """Context manager collecting :class:`LayerStats` of every quantized layer while it is open.

    >>> with track_stats(model) as stats:
    ...     model(x)
    >>> print_layer_stats(stats)
    """
    layers = [m for _, m in quant_layers(model)]
    for m in layers:
        m.track_stats(True)
    stats = [m.stats for m in layers]
    try:
        yield stats
    finally:
        for m in layers:
            m.track_stats(False)


def print_layer_stats(stats: list[LayerStats], console: Console | None = None) -> None:
    """Print a table: layer, K, tiles n, mode/gs, PSUM saturation rate, relative error vs FP."""
    t = Table(title="APSQ per-layer statistics")
    for col in ("layer", "K", "n", "mode", "sat. rate", "rel. err"):
        t.add_column(col, justify="left" if col in ("layer", "mode") else "right")
    for s in stats:
        mode = f"{s.mode} gs={s.gs}" if s.mode == "apsq" else s.mode
        t.add_row(s.name, str(s.k), str(s.n_tiles), mode, f"{s.saturation_rate:.2e}", f"{s.rel_error:.4f}")
    (console or Console()).print(t)
