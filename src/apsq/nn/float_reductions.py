"""Reductions that run in full precision outside every quantized layer, seen during calibration.

:func:`apsq.quantize_` swaps modules (``nn.Linear``, ``nn.Conv*``, GPT-2's ``Conv1D``) and hooks the
attention of the Hugging Face classes it knows; it cannot see a matmul written by hand in a
``forward`` (``torch.matmul(q, k.transpose(-1, -2))`` in a user's own attention block, ``x @ self.w``,
``F.linear(x, w)``). Those stay in full precision, their PSUMs unquantized. :func:`apsq.calibrate` runs
the model, so it watches for them (:class:`FloatReductionWatch`) and reports each one once: a
:class:`UserWarning` naming the module and the call, and an entry in ``model.apsq_report.skipped``.

Not reported: calls inside a quantized layer (its own arithmetic), inside a module the report already
lists (an excluded layer, an unsupported attention's ``qk_matmul`` / ``av_matmul``, a module's
``apsq_reductions``), and products with a reduction length of 1 (outer products such as rotary
embeddings' frequency tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["MATMULS", "FloatReduction", "FloatReductionWatch", "watch_float_reductions"]

MATMULS: frozenset[Callable[..., Any]] = frozenset({
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.bmm,
    torch.Tensor.bmm,
    torch.mm,
    torch.Tensor.mm,
})
"""The plain matrix products (``a @ b`` among them); also what :func:`apsq.hw.workloads.trace` records."""

_OTHERS: dict[Callable[..., Any], str] = {
    torch.Tensor.__rmatmul__: "matmul",
    torch.einsum: "einsum",
    torch.baddbmm: "baddbmm",
    torch.addmm: "addmm",
    torch.Tensor.addmm: "addmm",
    torch.Tensor.baddbmm: "baddbmm",
    F.scaled_dot_product_attention: "scaled_dot_product_attention",
    F.linear: "linear",
    F.conv1d: "conv1d",
    F.conv2d: "conv2d",
}


class FloatReduction:
    """One reduction call site: ``module`` (its path, ``""`` for the model), ``op`` and how often it ran."""

    def __init__(self, module: str, module_type: str, op: str) -> None:
        self.module, self.module_type, self.op, self.calls = module, module_type, op, 0

    @property
    def name(self) -> str:
        """``<module>.<op>`` (``<op>`` for the model itself)."""
        return f"{self.module}.{self.op}" if self.module else self.op


def _op_name(func: Callable[..., Any]) -> str | None:
    if func in MATMULS:
        return "matmul"
    return _OTHERS.get(func)


def _reduction_length(op: str, args: tuple[Any, ...]) -> int | None:
    """K of the call (None when it cannot be read: reported anyway)."""
    try:
        if op == "matmul":
            return int(args[0].shape[-1])
        if op in ("addmm", "baddbmm"):
            return int(args[1].shape[-1])
        if op in ("scaled_dot_product_attention", "linear"):
            return int(args[0].shape[-1])
    except (IndexError, AttributeError, TypeError):
        return None
    return None


class FloatReductionWatch(TorchFunctionMode):
    """Records every reduction call made outside the quantized layers and outside ``skip`` modules.

    ``names`` maps each module to its path; ``quantized`` and ``skip`` are module ids whose calls (and
    their children's) are not recorded. The module stack is kept by forward hooks that
    :func:`watch_float_reductions` installs."""

    def __init__(self, names: dict[int, str], types: dict[int, str], quantized: set[int], skip: set[int]) -> None:
        super().__init__()
        self.names, self.types, self.quantized, self.skip = names, types, quantized, skip
        self.stack: list[int] = []
        self.silent = 0  # depth inside a quantized or skipped module
        self.found: dict[tuple[str, str], FloatReduction] = {}

    def enter(self, module: nn.Module) -> None:
        self.stack.append(id(module))
        if id(module) in self.quantized or id(module) in self.skip:
            self.silent += 1

    def leave(self, module: nn.Module) -> None:
        if self.stack and self.stack[-1] == id(module):
            self.stack.pop()
            if id(module) in self.quantized or id(module) in self.skip:
                self.silent -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if not self.silent:
            op = _op_name(func)
            if op is not None and _reduction_length(op, args) != 1:
                where = self.stack[-1] if self.stack else None
                path = self.names.get(where, "") if where is not None else ""
                key = (path, op)
                if key not in self.found:
                    kind = self.types.get(where, "") if where is not None else ""
                    self.found[key] = FloatReduction(path, kind, op)
                self.found[key].calls += 1
        return func(*args, **kwargs)

    def reductions(self) -> list[FloatReduction]:
        """The recorded call sites, in first-call order."""
        return list(self.found.values())


@contextmanager
def watch_float_reductions(model: nn.Module, quantized: Sequence[nn.Module],
                           skip_names: Sequence[str]) -> Iterator[FloatReductionWatch]:
    """Watch ``model``'s forwards for reductions outside ``quantized`` and outside the modules named in
    ``skip_names`` (the report's skipped entries: a layer's path, or ``<module>.<reduction>`` for a
    reduction inside a module, ``<attn>.qk_matmul`` say, which skips ``<module>``)."""
    names = {id(m): n for n, m in model.named_modules()}
    types = {id(m): type(m).__name__ for m in model.modules()}
    wanted = set(skip_names)

    def inner(n: str, m: nn.Module) -> list[str]:
        reds = ("qk_matmul", "av_matmul", *getattr(type(m), "apsq_reductions", ()))
        return [f"{n}.{r}" if n else r for r in reds]

    skip = {id(m) for n, m in model.named_modules() if n in wanted or any(r in wanted for r in inner(n, m))}
    watch = FloatReductionWatch(names, types, {id(m) for m in quantized}, skip)
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(lambda mod, _a: watch.enter(mod)))
        handles.append(m.register_forward_hook(lambda mod, _a, _o: watch.leave(mod), always_call=True))
    try:
        with watch:
            yield watch
    finally:
        for h in handles:
            h.remove()

