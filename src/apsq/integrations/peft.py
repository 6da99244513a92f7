"""LoRA on APSQ models (PEFT): float adapters on a quantized base, and a merge that never clamps a code.

* **QLoRA-style training** (a frozen quantized base, float adapters): ``apsq.quantize_`` + ``calibrate``,
  ``model.requires_grad_(False)``, then ``peft.get_peft_model(model, LoraConfig(...))``. PEFT wraps the
  quantized Linear layers (``QuantLinear`` is an ``nn.Linear``); their steps stay fixed and the adapters
  train in full precision (``apsq.train.make_optimizer`` puts them in its weight groups).
* **LoRA first, then** ``quantize_``: the adapters (every module in a PEFT layer's ``lora_A`` / ``lora_B``
  / ... containers) are never quantized; ``model.apsq_report.skipped`` lists each container as left alone
  by design. (Before issue 22 they were quantized from their zero initialisation and output exactly 0.)
* **Merging**: PEFT's ``merge_and_unload`` adds ``B @ A`` into the base weight in place, under the weight
  steps learned for the old weight: 17 % of the merged codes clamped silently in issue 22's run. Use
  :func:`merge_and_unload` here: it merges, re-derives the weight steps of the merged layers by
  calibration's rule and reports the clamped codes before / after, per layer.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from apsq.errors import APSQError
from apsq.nn import QuantConv1d, QuantConv2d, QuantLinear, quant_layers
from apsq.quant.ops import qrange, round_half_up

__all__ = ["clamped_weight_codes", "merge_and_unload"]

_WEIGHTED = (QuantLinear, QuantConv1d, QuantConv2d)  # the quantized layers with a weight quantizer


def _weight(layer: QuantLinear | QuantConv1d | QuantConv2d) -> torch.Tensor:
    """The weight as the weight quantizer sees it: channels along axis 0."""
    return (layer.linear_weight() if isinstance(layer, QuantLinear) else layer.weight).detach().float()


def _codes(layer: QuantLinear | QuantConv1d | QuantConv2d) -> torch.Tensor:
    """Unclamped integer codes of the layer's weight under its current step."""
    wq = layer.weight_quant
    w = _weight(layer)
    s = wq.scale().to(w)
    s = s.reshape(-1, *([1] * (w.dim() - 1))) if wq.channel_axis is not None else s.reshape(())
    return round_half_up(w / s)


def clamped_weight_codes(model: nn.Module) -> dict[str, int]:
    """``{layer: number of weight codes outside the code range}`` for every quantized layer with any."""
    out: dict[str, int] = {}
    for name, layer in quant_layers(model):
        if not isinstance(layer, _WEIGHTED) or not bool(layer.weight_quant.initialized):
            continue
        n = _clamped(layer)
        if n:
            out[name] = n
    return out


def merge_and_unload(model: Any, **kwargs: Any) -> tuple[nn.Module, dict[str, tuple[int, int]]]:
    """PEFT's ``model.merge_and_unload(**kwargs)``, then the weight steps of every quantized layer an adapter
    was merged into re-derived from its merged weight by calibration's rule (the MSE-optimal power of two,
    :meth:`apsq.quant.lsq.LSQQuantizer.init_from`); layers without an adapter keep their trained steps.

    Returns ``(merged model, {layer: (codes clamped under the old steps, codes clamped after)})`` and warns
    with that count, so no merge changes codes silently.

    Raises:
        APSQError: ``model`` is not a PEFT model (no ``merge_and_unload``).
    """
    if not callable(getattr(model, "merge_and_unload", None)):
        raise APSQError(f"merge_and_unload: {type(model).__name__} is not a PEFT model (peft.get_peft_model)")
    bases = [m.get_base_layer() for m in model.modules()
             if getattr(m, "adapter_layer_names", None) and callable(getattr(m, "get_base_layer", None))]
    weighted = [b for b in bases if isinstance(b, _WEIGHTED) and bool(b.weight_quant.initialized)]
    merged = model.merge_and_unload(**kwargs)
    names = {id(m): n for n, m in merged.named_modules()}
    report: dict[str, tuple[int, int]] = {}
    with torch.no_grad():
        for layer in weighted:
            before = _clamped(layer)
            layer.weight_quant.init_from(_weight(layer))
            report[names.get(id(layer), layer.layer_name)] = (before, _clamped(layer))
    if report:
        warnings.warn(
            f"apsq merge_and_unload: weight steps re-derived for the merged weights of {len(report)} layer(s); "
            f"clamped codes under the old steps / after: {sum(b for b, _ in report.values())} / "
            f"{sum(a for _, a in report.values())} (per layer: the returned report)", stacklevel=2)
    return merged, report


def _clamped(layer: QuantLinear | QuantConv1d | QuantConv2d) -> int:
    qn, qp = qrange(layer.weight_quant.bits)
    c = _codes(layer)
    return int(((c < qn) | (c > qp)).sum())
