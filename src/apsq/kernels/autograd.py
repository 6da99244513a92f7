"""What every hand-written ``torch.autograd.Function`` of the kernels shares: first-order backward only.

The kernels' backward passes (C through ctypes, Triton) write their results through raw pointers, so
autograd cannot differentiate them again. Two families of public reports replay against that
(issue 25 item 8; PyTorch's "autograd.Function ... must override the setup_context staticmethod"
under ``torch.func``, and "trying to differentiate twice a function that was marked with
@once_differentiable"):

* ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ...): while one is active,
  :func:`apsq.kernels.options.backend` answers ``reference``, so every route takes the plain torch
  loop (differentiable to any order, vmappable) and no kernel Function is applied;
* ``create_graph=True`` (double backward, e.g. gradient penalties): :func:`first_order_only` raises an
  APSQError naming the workaround (``APSQ_KERNELS=reference``) before any second-order graph could be
  built on numbers autograd did not see.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from apsq.errors import APSQError

__all__ = ["first_order_only", "DOUBLE_BACKWARD_HINT"]

DOUBLE_BACKWARD_HINT = ("set APSQ_KERNELS=reference (or run under apsq.kernels.options.override(backend='reference')) "
                        "for double backward: the reference loop is plain torch and differentiable to any order")


def first_order_only(backward: Callable) -> Callable:
    """Decorator for a kernel Function's ``backward``: runs it under ``no_grad``; with ``create_graph=True``
    (grad mode on during backward) raises APSQError naming the Function and :data:`DOUBLE_BACKWARD_HINT`."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            name = type(ctx).__name__.removesuffix("Backward")
            raise APSQError(f"backward with create_graph=True through the fused kernel {name} is not supported: "
                            f"{DOUBLE_BACKWARD_HINT}")
        with torch.no_grad():
            return backward(ctx, *grads)

    wrapper.first_order_only = True  # type: ignore[attr-defined]
    return wrapper
