"""Moving batches to a model's device and calling the model on them: the one pair of helpers every command uses.

A batch may be a tensor, a mapping (``{"input_ids": ..., "labels": ...}``), a list / tuple of
batches, or anything else (returned as it is). Tensors move with ``non_blocking`` where the target
is CUDA; floating tensors optionally take the model's floating dtype (bf16 / fp16 models).
:func:`call_model` passes a batch of any of those forms to the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["call_model", "module_device", "module_dtype", "resolve_device", "to_device"]


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU for a module with neither)."""
    for t in module.parameters():
        return t.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating parameter (float32 for a module with none).

    Quantizer step parameters (named in a module's ``_float32_steps``: always float32, see
    :mod:`apsq.quant.fp32_steps`) do not count: a bf16 model is bf16.
    """
    for mod in module.modules():
        fixed = getattr(mod, "_float32_steps", ())
        for name, t in mod.named_parameters(recurse=False):
            if name not in fixed and t.is_floating_point():
                return t.dtype
    return torch.float32


def to_device(batch: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> Any:
    """``batch`` with every tensor on ``device`` (floating tensors cast to ``dtype`` when given).

    Mappings keep their keys and type where it can be rebuilt from a dict; lists and tuples keep
    their type. Integer tensors (token ids, labels) never change dtype.
    """
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        cast = dtype if dtype is not None and batch.is_floating_point() else None
        if batch.device == device and cast in (None, batch.dtype):
            return batch
        return batch.to(device=device, dtype=cast, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        moved = {k: to_device(v, device, dtype) for k, v in batch.items()}
        try:
            rebuild: Any = type(batch)  # a Mapping subclass built from a dict (TypeError otherwise)
            return rebuild(moved)
        except TypeError:
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device, dtype) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, dtype) for v in batch)
    return batch


def resolve_device(name: str | torch.device | None = "auto", parameter: str = "device") -> torch.device:
    """The device a command runs its model on: ``"auto"`` (or None) is ``cuda`` when a GPU is
    present, else ``cpu``; any other name must be a device torch knows and can reach here.

    Raises:
        APSQError: naming ``parameter``, the value and the allowed forms, for an unknown device or a
            CUDA device on a machine without one.
    """
    from apsq.errors import APSQError

    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name.strip() if isinstance(name, str) else name)
    except (RuntimeError, TypeError) as exc:
        raise APSQError(f"{parameter} must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise APSQError(f"{parameter} {name!r}: no CUDA device is available here; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise APSQError(f"{parameter} {name!r}: only {torch.cuda.device_count()} CUDA device(s) here "
                            f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type != "cpu":
        raise APSQError(f"{parameter} must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}")
    return dev


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple / list, else ``model(inputs)``: the
    model's output as it returns it (a tensor, or a Hugging Face output object)."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)
