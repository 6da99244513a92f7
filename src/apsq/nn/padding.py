"""Which positions of a batch are padding, for calibration and lazy initialisation (issue 25 item 3).

A padded batch of sentences (``input_ids [B, S]`` with ``attention_mask [B, S]``, 0 = padding) must give
the same steps as the same sentences unpadded: padded positions never enter the statistics. The model
that :func:`apsq.quantize_` returns captures the ``attention_mask`` keyword of each call (a forward
pre-hook on the model, so every source of batches is covered: :func:`apsq.calibrate`, ``apsq train``,
the Hugging Face Trainer integration, a first lazy forward); while that call runs, quantized layers read
it here:

* a Linear whose input is ``[B, S, K]`` with ``[B, S]`` equal to the mask's shape keeps only the rows
  of real tokens;
* attention's matmuls keep, per sentence, the query rows and key positions of real tokens (QK^T: rows and
  columns; AV: rows and the reduction over keys).

Inputs of other shapes (pooled heads, convolutions, a decoding step with a KV cache) are not filtered.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

__all__ = ["current_mask", "install", "valid_rows"]

_MASK: ContextVar[torch.Tensor | None] = ContextVar("apsq_padding_mask", default=None)
_TOKENS = "_apsq_padding_tokens"


def current_mask() -> torch.Tensor | None:
    """The boolean ``[B, S]`` mask of real tokens of the model call running now (``None`` outside one)."""
    return _MASK.get()


def valid_rows(x: torch.Tensor) -> torch.Tensor:
    """``x [..., K]`` as rows ``[R, K]``, without the padded positions when ``x`` is ``[B, S, K]`` and the
    running call's mask is ``[B, S]``."""
    mask = _MASK.get()
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


def _enter(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    mask = kwargs.get("attention_mask")
    ok = isinstance(mask, torch.Tensor) and mask.dim() == 2 and not mask.is_floating_point()
    module.__dict__.setdefault(_TOKENS, []).append(_MASK.set(mask.bool() if ok and mask is not None else None))


def _leave(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
    tokens = module.__dict__.get(_TOKENS)
    if tokens:
        _MASK.reset(tokens.pop())


def install(model: nn.Module) -> None:
    """Make ``model``'s calls publish their integer / boolean ``attention_mask [B, S]`` (see module doc)."""
    model.register_forward_pre_hook(_enter, with_kwargs=True)
    model.register_forward_hook(_leave, with_kwargs=True, always_call=True)
