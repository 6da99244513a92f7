"""Trace the GEMM layers of any PyTorch model for one input (meta device: no memory, no compute).

Forward hooks on every module keep the name of the module currently running. GEMM modules
(``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and their subclasses, e.g. apsq's ``QuantLinear`` /
``QuantConv2d``, and apsq's ``QuantMatmul``) are recorded as one layer each from their forward hook,
whatever they compute inside (a quantized layer's per-tile matmuls are not separate layers). Outside
them a :class:`~torch.overrides.TorchFunctionMode` records each GEMM-shaped call (``F.linear``,
``F.conv1d/2d``, ``matmul``/``@``, ``bmm``, ``mm``, ``addmm``, ``baddbmm``) and expands
``F.scaled_dot_product_attention`` into its two matmuls, ``QKᵀ`` (suffix ``.qk``) and ``AV``
(suffix ``.av``), and ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) into its input
projections (``.in_proj``, or ``.q_proj`` / ``.kv_proj`` / ``.k_proj`` / ``.v_proj``), ``.qk``, ``.av`` and
``.out_proj`` (until this session those GEMMs, run inside one call the mode sees from outside, were dropped
without a word). Attention is counted in full (no causal-mask savings): the array computes every score,
masking happens afterwards. Not seen: GEMMs inside other single fused calls.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from apsq.errors import APSQError
from apsq.hw.workloads.base import Layer, Workload
from apsq.nn.float_reductions import MATMULS

__all__ = ["trace", "trace_factory"]

_MATMULS = MATMULS
_ADDMMS = {torch.addmm, torch.baddbmm, torch.Tensor.addmm, torch.Tensor.baddbmm}


def _prod(xs: Any) -> int:
    return int(math.prod(int(x) for x in xs))


def is_attention(mod: nn.Module) -> bool:
    """A Hugging Face style attention module (class name ending in ``Attention``; not
    ``nn.MultiheadAttention``, whose projections run inside one fused call)."""
    return type(mod).__name__.endswith("Attention") and not isinstance(mod, nn.MultiheadAttention)


def _is_gemm_module(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) or type(mod).__name__ == "QuantMatmul"


class _GemmRecorder(TorchFunctionMode):
    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.layers: list[Layer] = []
        self._seen: Counter[str] = Counter()
        self.inside_gemm_module = 0
        self.quantized_model = False  # set by trace() for a model apsq.quantize_ has seen
        self.current_qcfg: Any = None  # the quantization config of the GEMM module being recorded
        self.attention_calls: list[list[int]] = []  # per open module call: [is *Attention, its matmuls so far]

    def record_module(self, mod: nn.Module, args: tuple, out: Any) -> None:
        """One layer for a GEMM module, from its weight and its input / output shapes."""
        if not isinstance(out, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        self.current_qcfg = getattr(mod, "qcfg", None)
        try:
            self._record_module(mod, args, out, x)
        finally:
            self.current_qcfg = None

    def _record_module(self, mod: nn.Module, args: tuple, out: Any, x: Any) -> None:
        if isinstance(mod, nn.Linear):
            self._add("linear", x.numel() // max(1, mod.in_features), mod.in_features, mod.out_features, 1, True)
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            g = mod.groups
            k = (mod.in_channels // g) * _prod(mod.kernel_size)
            kind = "conv2d" if isinstance(mod, nn.Conv2d) else "conv1d"
            self._add(kind, out.shape[0] * _prod(out.shape[2:]), k, mod.out_channels // g, g, True)
        elif len(args) > 1 and isinstance(args[1], torch.Tensor):  # QuantMatmul(a, b)
            a, b = args[0], args[1]
            count = _prod(out.shape[:-2]) if out.dim() > 2 else 1
            self._add("matmul", a.shape[-2], a.shape[-1], b.shape[-1], count, False)

    def _name(self, suffix: str = "") -> str:
        base = (self.stack[-1] if self.stack else "") or "model"
        name = base + suffix
        self._seen[name] += 1
        return name if self._seen[name] == 1 else f"{name}#{self._seen[name]}"

    def _add(self, kind: str, m: int, k: int, n: int, count: int, w_is_weight: bool, suffix: str = "") -> None:
        if min(m, k, n, count) < 1:
            return  # empty GEMM (e.g. zero-length input): nothing to map
        qcfg = self.current_qcfg
        full = self.quantized_model and (qcfg is None or getattr(qcfg, "mode", "none") == "none")
        gs = None if qcfg is None or full else int(qcfg.gs)
        tile = None if gs is None else int(qcfg.tile)
        self.layers.append(Layer(self._name(suffix), kind, int(m), int(k), int(n), int(count), w_is_weight,
                                 full_precision=full, gs=gs, tile=tile))

    def _attention_suffix(self, func: Any, k: int) -> str:
        """``.qk`` / ``.av`` for the first / second matmul of one call of an eager ``*Attention`` module (the
        names its SDPA twin gets, and what an APSQConfig's ``<attn>.qk_matmul`` / ``.av_matmul`` patterns
        match: :func:`apsq.hw.workloads.base.config_names`); ``""`` otherwise. Products with K = 1 (rotary
        tables) are not counted."""
        if func in _ADDMMS or not self.attention_calls or not self.attention_calls[-1][0] or k == 1:
            return ""
        frame = self.attention_calls[-1]
        frame[1] += 1
        return {1: ".qk", 2: ".av"}.get(frame[1], "")

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside_gemm_module:
            return out  # recorded once by the module's hook
        try:
            self._record(func, args, kwargs, out)
        except (IndexError, AttributeError, TypeError):  # an unusual call signature: skip, never break the model
            pass
        return out

    def _record(self, func, args, kwargs, out) -> None:  # noqa: ANN001
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            self._add("linear", x.numel() // max(1, x.shape[-1]), w.shape[1], w.shape[0], 1, True)
        elif func in (F.conv2d, F.conv1d):
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            groups = x.shape[1] // w.shape[1] if x.dim() == w.dim() else 1
            spatial = _prod(out.shape[2:]) * out.shape[0]
            kind = "conv2d" if func is F.conv2d else "conv1d"
            self._add(kind, spatial, _prod(w.shape[1:]), w.shape[0] // groups, groups, True)
        elif func in _MATMULS or func in _ADDMMS:
            a, b = (args[1], args[2]) if func in _ADDMMS else (args[0], args[1])
            if a.dim() < 2 or b.dim() < 2:
                m = 1 if a.dim() == 1 else a.shape[-2]
                n = 1 if b.dim() == 1 else b.shape[-1]
                self._add("matmul", m, a.shape[-1], n, max(1, out.numel() // max(1, m * n)), False)
                return
            count = _prod(out.shape[:-2]) if out.dim() > 2 else 1
            self._add("matmul", a.shape[-2], a.shape[-1], b.shape[-1], count, isinstance(b, nn.Parameter),
                      self._attention_suffix(func, a.shape[-1]))
        elif func is F.multi_head_attention_forward:
            self._record_mha(args, kwargs)
        elif func is F.scaled_dot_product_attention:
            q, k, v = (
                args[0],
                args[1] if len(args) > 1 else kwargs["key"],
                args[2] if len(args) > 2 else kwargs["value"],
            )
            count = _prod(q.shape[:-2])
            self._add("matmul", q.shape[-2], q.shape[-1], k.shape[-2], count, False, ".qk")
            self._add("matmul", q.shape[-2], k.shape[-2], v.shape[-1], count, False, ".av")

    def _record_mha(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """The GEMMs of one ``F.multi_head_attention_forward`` call (torch's argument order): the input
        projections as :func:`F.linear` would run them (one packed ``E -> 3E`` product for self-attention),
        ``QKᵀ`` and ``AV`` per batch and head (``S`` grows by one for ``bias_k`` and for ``add_zero_attn``),
        and the output projection."""
        names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight")
        a = dict(zip(names, args)) | kwargs
        q, k, v, heads = a["query"], a["key"], a["value"], int(a["num_heads"])
        e = int(q.shape[-1])
        batch = int(q.shape[1]) if q.dim() == 3 else 1
        lq, s = int(q.shape[0]), int(k.shape[0])
        if a.get("use_separate_proj_weight"):
            self._add("linear", lq * batch, e, e, 1, True, ".q_proj")
            self._add("linear", s * batch, int(k.shape[-1]), e, 1, True, ".k_proj")
            self._add("linear", s * batch, int(v.shape[-1]), e, 1, True, ".v_proj")
        elif k is v and q is k:
            self._add("linear", lq * batch, e, 3 * e, 1, True, ".in_proj")
        elif k is v:
            self._add("linear", lq * batch, e, e, 1, True, ".q_proj")
            self._add("linear", s * batch, e, 2 * e, 1, True, ".kv_proj")
        else:
            for suffix, t in ((".q_proj", q), (".k_proj", k), (".v_proj", v)):
                self._add("linear", int(t.shape[0]) * batch, e, e, 1, True, suffix)
        s += int(a.get("bias_k") is not None) + int(bool(a.get("add_zero_attn")))
        d = e // heads
        self._add("matmul", lq, d, s, batch * heads, False, ".qk")
        self._add("matmul", lq, s, d, batch * heads, False, ".av")
        self._add("linear", lq * batch, e, int(a["out_proj_weight"].shape[0]), 1, True, ".out_proj")


def trace(
    model: nn.Module, *args: Any, name: str | None = None, options: dict | None = None, **kwargs: Any
) -> Workload:
    """Run ``model(*args, **kwargs)`` once under ``no_grad`` and return its GEMM layers in order.

    Put the model and inputs on the meta device to trace without memory or compute.

    A model that :func:`apsq.quantize_` has seen (it has ``apsq_report``): its quantized GEMM modules
    carry their own ``gs`` (:attr:`Layer.gs`; ``evaluate(..., gs=None)`` prices them); every other
    GEMM — layers left in full precision (``exclude``, unsupported types), INT32-PSUM modules
    (``mode="none"``) and matmuls no quantized module computes — is kept with
    ``full_precision=True`` and priced at the baseline PSUM width in both columns of a comparison
    (issue 23 item 6: dropping them, e.g. GPT-2's ``lm_head``, overstated the saving).
    """
    if not isinstance(model, nn.Module):
        raise APSQError(f"trace needs a torch.nn.Module, got {type(model).__name__}")
    stack: list[str] = []
    names = {id(mod): n for n, mod in model.named_modules()}
    handles = []
    recorder = _GemmRecorder(stack)
    recorder.quantized_model = getattr(model, "apsq_report", None) is not None

    def pre(mod: nn.Module, _inp: Any) -> None:
        stack.append(names.get(id(mod), type(mod).__name__))
        recorder.attention_calls.append([is_attention(mod), 0])
        if _is_gemm_module(mod):
            recorder.inside_gemm_module += 1

    def post(mod: nn.Module, inp: Any, out: Any) -> None:
        if _is_gemm_module(mod):
            recorder.inside_gemm_module -= 1
            if recorder.inside_gemm_module == 0:
                recorder.record_module(mod, inp, out)
        if stack:
            stack.pop()
        if recorder.attention_calls:
            recorder.attention_calls.pop()

    for mod in model.modules():
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post, always_call=True))
    try:
        with torch.no_grad(), recorder:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return Workload(name or type(model).__name__, tuple(recorder.layers), dict(options or {}))


def trace_factory(factory: Callable[[], Any], name: str | None = None) -> Workload:
    """Build with ``factory()`` on the meta device and trace it.

    ``factory`` returns a :class:`Workload`, or ``(model, inputs)`` where inputs is a tuple of
    positional arguments or a dict of keyword arguments.
    """
    with torch.device("meta"):
        made = factory()
        if isinstance(made, Workload):
            return made
        if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)):
            raise APSQError(
                f"factory {getattr(factory, '__name__', factory)!r} must return a Workload or (model, inputs); "
                f"got {type(made).__name__}"
            )
        model, inputs = made
        fname = name or getattr(factory, "__name__", type(model).__name__)
        if isinstance(inputs, dict):
            return trace(model, name=fname, **inputs)
        if not isinstance(inputs, tuple):
            inputs = (inputs,)
        return trace(model, *inputs, name=fname)
