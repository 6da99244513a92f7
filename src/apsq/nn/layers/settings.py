"""The settings record a quantized layer keeps in its state dict (``<layer>._extra_state``): which
quantization settings its steps belong to, checked when a checkpoint is loaded."""

from __future__ import annotations

import json
from typing import Any

import torch

from apsq.errors import APSQError
from apsq.nn.config import LAYER_FIELDS, LayerQuantConfig

__all__ = ["SETTINGS_FORMAT", "decode_settings", "encode_settings", "settings_mismatch", "settings_record"]

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
