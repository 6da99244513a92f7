"""``quantize_(model, config)``: swap layers for their PSUM-aware quantized twins, in place.

The steps are set afterwards from data by :func:`apsq.nn.calibration.calibrate`."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import nn

from apsq.device import module_device, module_dtype
from apsq.errors import APSQError
from apsq.nn.attention import SUPPORTED_ATTENTION, attach_attention_matmuls, is_supported_attention
from apsq.config import unmatched_patterns
from apsq.nn.config import APSQConfig, LayerQuantConfig
from apsq.nn.layers import (
    QUANT_LAYER_TYPES,
    QuantLayer,
    QuantConv1d,
    QuantConv2d,
    QuantLinear,
    QuantMatmul,
    QuantTransposedLinear,
    decode_settings,
    per_channel_matmul_error,
    settings_mismatch,
    settings_record,
)
from apsq.nn.optim_check import watch as watch_optimizers
from apsq.nn.padding import install as install_padding_capture
from apsq.nn.stats import LayerStats
from apsq.psum.fused import kernel_backend

_SWAPS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "linear": (nn.Linear, QuantLinear),
    "conv1d": (nn.Conv1d, QuantConv1d),
    "conv2d": (nn.Conv2d, QuantConv2d),
}

# Layer types with a reduction (a GEMM inside) that apsq does not swap, and why.
_UNSUPPORTED: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.MultiheadAttention, ("its projections run inside F.multi_head_attention_forward, which apsq cannot "
                            "tile (use a Hugging Face attention with attention_matmuls, or nn.Linear layers)")),
    (nn.RNNBase, "recurrent cells (RNN / LSTM / GRU) have no PSUM-tiled twin in apsq"),
    (nn.RNNCellBase, "recurrent cells (RNN / LSTM / GRU) have no PSUM-tiled twin in apsq"),
    (nn.Conv3d, "apsq has no quantized Conv3d"),
    (nn.ConvTranspose1d, "apsq has no quantized transposed convolution"),
    (nn.ConvTranspose2d, "apsq has no quantized transposed convolution"),
    (nn.ConvTranspose3d, "apsq has no quantized transposed convolution"),
    (nn.Bilinear, "apsq has no quantized nn.Bilinear"),
)
_NO_REDUCTION = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class SkippedLayer:
    """A layer with a reduction that :func:`quantize_` left in full precision."""

    name: str
    """Module path (the first one, for a module reachable under several names)."""
    type: str
    """Class name."""
    reason: str
    """Why it was left alone and what to do about it."""
    by_config: bool = False
    """Left alone because the config says so (``exclude``, ``enabled: false``, ``layer_types``); no warning."""


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_` did; kept on the model as ``model.apsq_report``."""

    quantized: tuple[str, ...] = ()
    """Names of the swapped layers (one per module, its first name)."""
    skipped: tuple[SkippedLayer, ...] = ()
    """Layers with a reduction left in full precision (excluded, type not enabled, or unsupported), and
    reductions inside modules apsq does not swap: attention's ``<name>.qk_matmul`` / ``<name>.av_matmul``
    when they are not quantized, and every name a module lists in ``apsq_reductions``."""
    config: APSQConfig | None = None
    """The config :func:`quantize_` applied (a second call compares against it)."""

    def describe(self, limit: int = 8) -> str:
        """``name (Type): reason; ...`` for the first ``limit`` skipped layers."""
        parts = [f"{s.name} ({s.type}): {s.reason}" for s in self.skipped[:limit]]
        more = len(self.skipped) - limit
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _is_hf_conv1d(mod: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 and relatives): a Linear with its weight stored ``[in, out]``."""
    return (type(mod).__name__ == "Conv1D" and type(mod).__module__.startswith("transformers")
            and isinstance(w := getattr(mod, "weight", None), torch.Tensor) and w.dim() == 2)


def _quant_class(mod: nn.Module, layer_types: tuple[str, ...]) -> tuple[type[nn.Module] | None, str | None]:
    """``(quantized class, None)`` for a module apsq swaps under ``layer_types``; ``(None, reason)`` for a
    layer with a reduction it leaves alone; ``(None, None)`` for anything else."""
    if _is_hf_conv1d(mod):
        if "linear" in layer_types:
            return QuantTransposedLinear, None
        return None, "transformers Conv1D (a Linear) is quantized with layer_types 'linear', which is not enabled"
    for t, (float_cls, quant_cls) in _SWAPS.items():
        if type(mod) is float_cls:
            if t in layer_types:
                return quant_cls, None
            return None, f"layer type {t!r} is not in layer_types {list(layer_types)}"
    if isinstance(mod, QUANT_LAYER_TYPES):
        return None, None
    for cls, why in _UNSUPPORTED:
        if isinstance(mod, cls):
            return None, why
    for float_cls in (nn.Linear, nn.Conv1d, nn.Conv2d):
        if isinstance(mod, float_cls):
            return None, (f"a subclass of nn.{float_cls.__name__} (its forward may differ); apsq swaps exact "
                          f"nn.{float_cls.__name__} modules only")
    if isinstance(mod, _NO_REDUCTION):
        return None, None
    w = mod._parameters.get("weight")
    if isinstance(w, torch.Tensor) and w.dim() >= 2:  # a weight-bearing layer (not a norm, not a cls token)
        return None, (f"unknown layer type with a {w.dim()}-D weight {tuple(w.shape)}; apsq does not know its "
                      "reduction (replace it by nn.Linear / nn.Conv1d / nn.Conv2d, or leave it in full precision)")
    return None, None


@dataclass
class _Use:
    module: nn.Module
    names: list[str] = field(default_factory=list)
    places: list[tuple[nn.Module, str]] = field(default_factory=list)


def _uses(model: nn.Module) -> list[_Use]:
    """Every module below ``model`` with all its names and (parent, attribute) places, in order."""
    uses: dict[int, _Use] = {}
    for pname, parent in model.named_modules():
        for attr, child in parent._modules.items():
            if child is None:
                continue
            full = f"{pname}.{attr}" if pname else attr
            u = uses.setdefault(id(child), _Use(child))
            u.names.append(full)
            u.places.append((parent, attr))
    return list(uses.values())


def quantize_(model: nn.Module, config: APSQConfig | None = None) -> nn.Module:
    """Replace ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and Hugging Face's ``Conv1D`` (and, if asked,
    attention matmuls) in ``model`` in place.

    Quantized layers share the original parameters. Their step sizes are initialised by
    :func:`calibrate` (or lazily from the first batch). A module used at several places (``nn.Sequential
    (lin, act, lin)``, or one module under two parents) becomes one quantized module used at all of them.
    Every reduction that stays in full precision is listed in ``model.apsq_report``
    (:class:`QuantizeReport`): layers excluded, of a type not in ``layer_types`` or without a quantized twin;
    attention matmuls (``<attention>.qk_matmul`` / ``.av_matmul``) of every ``*Attention`` module when
    ``attention_matmuls`` is off or its class is not one apsq hooks (:data:`apsq.nn.attention.SUPPORTED_ATTENTION`);
    and the reductions a module of ours declares in ``apsq_reductions`` (EfficientViT's linear attention).
    Those left alone by the config are listed silently, the others also raise one warning.

    Every layer's settings travel with its state dict (``<layer>._extra_state``): loading a state dict
    saved with other settings is an :class:`APSQError` naming the layers and fields, raised before any
    tensor is loaded (the whole model is checked first). Returns ``model``.

    Calling it again on a quantized model with the same config does nothing (the report is kept); with
    another config it is refused (start from the float model: quantize_ never re-applies).

    Raises:
        APSQError: a bad config; a pattern of ``exclude`` / ``overrides`` that matches no layer of the model
            (named, with close names); ``model`` itself a quantized layer; a model already quantized with
            another config; a float model whose config says it was saved quantized by apsq (its trained
            steps were dropped on loading); a shared module whose names get different settings; settings a
            layer cannot take. Raised before the model is changed.
    """
    config = config or APSQConfig()
    plan = _plan(model, config)
    if plan is None:
        return model
    swaps, skipped = plan
    # --- nothing above changed the model; apply ---------------------------------------------------
    for use, q in swaps:
        for parent, attr in use.places:
            parent._modules[attr] = q
    if config.attention_matmuls:
        for name, module in list(model.named_modules()):
            if is_supported_attention(module) and not hasattr(module, "apsq_qk"):
                _attach(module, name, config)
    skipped.extend(_unquantized_reductions(model, config))
    report = QuantizeReport(tuple(u.names[0] for u, _ in swaps), tuple(skipped), config)
    model.apsq_report = report  # type: ignore[assignment]  # a plain attribute on the user's model (nn.Module types only tensors / modules)
    model.register_load_state_dict_pre_hook(_check_settings_before_load)
    install_padding_capture(model)  # calibration and lazy initialisation skip padded positions
    watch_optimizers(model)  # one StepSizeWarning for an optimizer that cannot learn the steps
    _record_in_hf_config(model, config)
    bad = [s for s in skipped if not s.by_config]
    if bad:
        warnings.warn(
            f"apsq.quantize_ left {len(bad)} layer(s) with a reduction in full precision: "
            f"{QuantizeReport(skipped=tuple(bad)).describe()} (all of them: model.apsq_report.skipped)",
            stacklevel=2,
        )
    return model


def check_config(model: nn.Module, config: APSQConfig | None = None) -> None:
    """Raise the :class:`APSQError` that ``quantize_(model, config)`` would raise, changing nothing.

    For a program that quantizes late (``apsq train`` fine-tunes in full precision first): a bad
    ``exclude`` / ``overrides`` pattern, settings a layer cannot take, a shared module with two
    settings, an already quantized model are reported before hours of work, not after them.
    """
    _plan(model, config or APSQConfig())


def _plan(model: nn.Module, config: APSQConfig) -> tuple[list[tuple[_Use, nn.Module]], list[SkippedLayer]] | None:
    """The swaps and skipped layers of ``quantize_(model, config)`` (None: already quantized with
    ``config``); every refusal of :func:`quantize_` is raised here, and the model is not changed."""
    if not isinstance(config, APSQConfig):
        raise APSQError(f"config must be an APSQConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise APSQError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, QUANT_LAYER_TYPES):
        raise APSQError("model is already a quantized layer; pass its parent")
    kernel_backend()  # a bad APSQ_KERNELS fails here, before any change (and before apsq train's fine-tune)
    if _already_quantized(model, config):
        return None
    _check_attention_granularity(model, config)
    uses = _uses(model)
    _check_patterns(model, config, uses)
    swaps: list[tuple[_Use, nn.Module]] = []
    skipped: list[SkippedLayer] = []
    unsupported: set[int] = set()
    root_cls, root_why = _quant_class(model, config.layer_types)
    if root_cls is not None or root_why is not None:
        skipped.append(SkippedLayer("(model)", type(model).__name__, "the model itself is a single layer; wrap it "
                                    "(e.g. nn.Sequential(layer)) so quantize_ can replace it"))
    adapters = _adapter_modules(model)
    for use in uses:
        if id(use.module) in adapters:
            if use.module is adapters[id(use.module)][0]:  # the adapter container: one line for it
                skipped.append(SkippedLayer(adapters[id(use.module)][1], type(use.module).__name__,
                                            "PEFT adapter: adapters stay in full precision (QLoRA-style: a "
                                            "quantized, frozen base and float adapters)", True))
            continue
        if any(id(p) in unsupported for p, _ in use.places):
            unsupported.add(id(use.module))  # inside a skipped layer: reported with it
            continue
        quant_cls, why = _quant_class(use.module, config.layer_types)
        name = use.names[0]
        if quant_cls is None:
            if why is not None:
                skipped.append(SkippedLayer(name, type(use.module).__name__, why, "layer_types" in why))
                unsupported.add(id(use.module))
            continue
        cfgs = {config.for_module(n) for n in use.names}
        if len(cfgs) > 1:
            raise APSQError(
                f"module {type(use.module).__name__} is used as {', '.join(use.names)}, and those names get "
                "different settings (exclude / overrides); one module is one quantized layer: give all its "
                "names the same settings"
            )
        lcfg: LayerQuantConfig = cfgs.pop()
        if not lcfg.enabled:
            skipped.append(SkippedLayer(name, type(use.module).__name__,
                                        "excluded by the config (exclude / enabled: false)", True))
            continue
        q = quant_cls.from_float(use.module, lcfg, config.check_finite)  # type: ignore[attr-defined]  # every class in _SWAPS has it
        q.layer_name = name
        swaps.append((use, q))
    return swaps, skipped


def _config_diff(old: APSQConfig, new: APSQConfig) -> str:
    fields = [f for f in old.to_dict() if getattr(old, f) != getattr(new, f)]
    return ", ".join(f"{f} {getattr(old, f)!r} -> {getattr(new, f)!r}" for f in fields)


QUANT_METHOD = "apsq"
"""``quant_method`` of the ``quantization_config`` apsq writes into a Hugging Face model's config."""


def _record_in_hf_config(model: nn.Module, config: APSQConfig) -> None:
    """Write ``{"quant_method": "apsq", "apsq": config}`` into a Hugging Face model's
    ``config.quantization_config`` (unless a quantizer object is there already: ``from_pretrained``'s), so
    ``save_pretrained`` records how to rebuild the model (:mod:`apsq.integrations.transformers`)."""
    hf_config = getattr(model, "config", None)
    if hf_config is None or not hasattr(hf_config, "to_json_string"):
        return
    current = getattr(hf_config, "quantization_config", None)
    if current is None or isinstance(current, Mapping):
        # the quantized model gets its own config: models built from the same config object stay float
        own = copy.copy(hf_config)
        for m in model.modules():
            if getattr(m, "config", None) is hf_config:
                m.config = own
        own.quantization_config = {"quant_method": QUANT_METHOD, "apsq": config.to_dict()}


def _saved_quant_method(model: nn.Module) -> str | None:
    """``quant_method`` of a Hugging Face model's ``config.quantization_config`` when it is still the raw
    mapping from ``config.json`` (no quantizer ran on loading), else ``None``."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    return qc.get("quant_method") if isinstance(qc, Mapping) else None


def _already_quantized(model: nn.Module, config: APSQConfig) -> bool:
    """True if ``model`` was quantized with ``config`` (nothing to do); :class:`APSQError` if it holds
    quantized layers of another (or an unknown) config, or if it is the float shell of an apsq checkpoint."""
    layers = [n for n, _ in quant_layers(model)]
    if not layers:
        if _saved_quant_method(model) == QUANT_METHOD:
            raise APSQError(
                "quantize_: this model's config says it was saved quantized by apsq (config.quantization_config "
                "quant_method 'apsq'), but it holds no quantized layer: from_pretrained dropped its trained steps "
                "because apsq's quantizer was not registered. Quantizing it again would re-initialise those steps; "
                "`import apsq.integrations.transformers` before from_pretrained to load it quantized"
            )
        return False
    prev = getattr(getattr(model, "apsq_report", None), "config", None)
    if prev == config:
        return True
    what = (f"with another config ({_config_diff(prev, config)})" if isinstance(prev, APSQConfig)
            else f"({len(layers)} quantized layers, e.g. {layers[0]!r})")
    raise APSQError(
        f"quantize_: the model is already quantized {what}; quantize_ does not re-apply (its learned steps "
        "and report would be lost). Start from the float model, with one config (overrides for per-layer "
        "settings); nothing was changed"
    )


def _pattern_fields(config: APSQConfig) -> list[tuple[str, str]]:
    """``(field, pattern)`` for every module-name pattern the user gave."""
    return [("exclude", p) for p in config.exclude] + [("overrides", p) for p in config.overrides]


def _check_patterns(model: nn.Module, config: APSQConfig, uses: list[_Use]) -> None:
    """:class:`APSQError` naming every ``exclude`` / ``overrides`` pattern that matches no layer quantize_
    decides about (a typo would silently quantize the layer it meant), with the closest layer names."""
    fields = _pattern_fields(config)
    if not fields:
        return
    layers: list[str] = []
    for use in uses:
        cls, why = _quant_class(use.module, config.layer_types)
        if cls is not None or why is not None:
            layers.extend(use.names)
    for name, module in model.named_modules():
        if is_supported_attention(module):
            layers.extend((f"{name}.qk_matmul", f"{name}.av_matmul"))
    modules = {n: type(m).__name__ for n, m in model.named_modules() if n}

    def container(pattern: str) -> str | None:
        if pattern not in modules:
            return None
        return (f" ({pattern!r} is a {modules[pattern]} without a reduction of its own; "
                f"{pattern + '.*'!r} covers the layers inside it)")

    bad = unmatched_patterns(fields, layers, container)
    if bad:
        example = ", ".join(repr(n) for n in layers[:4]) or "none"
        raise APSQError(
            f"quantize_: {'; '.join(bad)} matches no layer of this model (patterns are fnmatch patterns on "
            f"module names, e.g. {example}); fix or remove it. Nothing was changed"
        )


def _adapter_modules(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """Every module inside a PEFT tuner layer's adapter containers (``lora_A``, ``lora_B``, ...: the names
    in its ``adapter_layer_names``), mapped to ``(its container, the container's name)``. Duck-typed: peft
    itself is not imported."""
    out: dict[int, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules():
        for attr in getattr(module, "adapter_layer_names", ()) or ():
            box = getattr(module, attr, None)
            if isinstance(box, nn.Module) and next(box.children(), None) is not None:
                label = f"{name}.{attr}" if name else attr
                for inner in box.modules():
                    out.setdefault(id(inner), (box, label))
    return out


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Innermost modules whose class name ends in ``Attention`` (Hugging Face's naming), except
    ``nn.MultiheadAttention`` (reported as a layer)."""
    found = [(n, m) for n, m in model.named_modules()
             if type(m).__name__.endswith("Attention") and not isinstance(m, nn.MultiheadAttention)]
    return [(n, m) for n, m in found
            if not any(c is not m and type(c).__name__.endswith("Attention") for c in m.modules())]


def _unquantized_reductions(model: nn.Module, config: APSQConfig) -> list[SkippedLayer]:
    """Reductions inside modules quantize_ does not swap and that stay in full precision."""
    out: list[SkippedLayer] = []
    for name, module in _attention_modules(model):
        if hasattr(module, "apsq_qk"):
            continue
        kind = type(module).__name__
        if not config.attention_matmuls:
            why, by_config = "attention matmul left in full precision (attention_matmuls is off)", True
        elif type(module).__name__ not in SUPPORTED_ATTENTION or not hasattr(module, "config"):
            why, by_config = (f"apsq hooks the attention matmuls of {', '.join(SUPPORTED_ATTENTION)} only; this "
                              f"{kind}'s QK^T / AV stay in full precision"), False
        else:
            why, by_config = "excluded by the config (exclude / enabled: false)", True
        out.extend(SkippedLayer(f"{name}.{mm}", kind, why, by_config) for mm in ("qk_matmul", "av_matmul"))
    for name, module in model.named_modules():
        for red in getattr(type(module), "apsq_reductions", ()):
            out.append(SkippedLayer(f"{name}.{red}" if name else red, type(module).__name__,
                                    "an activation x activation matmul inside this module's forward; apsq has no "
                                    "quantized twin for it (the energy model still prices it)"))
    return out


def _check_settings_before_load(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook of a quantized model: every layer's saved settings are compared before
    any tensor is loaded; one :class:`APSQError` names all layers that differ."""
    errors: list[tuple[str, str]] = []
    for name, layer in quant_layers(module):
        key = f"{prefix}{name}._extra_state" if name else f"{prefix}_extra_state"
        if key in state_dict:
            where = f"{layer.kind} layer {layer.layer_name or name}"
            err = settings_mismatch(layer.layer_name or name, settings_record(layer.kind, layer.qcfg),
                                    decode_settings(state_dict[key], where))
            if err is not None:
                errors.append((layer.layer_name or name, str(err)))
    if errors:
        others = [n for n, _ in errors[1:]]
        more = (f". Other layers that differ: {', '.join(others[:8])}{' ...' if len(others) > 8 else ''}."
                if others else "")
        raise APSQError(errors[0][1].replace("nothing was loaded into this layer", "nothing was loaded") + more)


def _attach(module: nn.Module, name: str, config: APSQConfig) -> None:
    qk = config.for_module(f"{name}.qk_matmul")
    av = config.for_module(f"{name}.av_matmul")
    if not (qk.enabled or av.enabled):
        return
    attach_attention_matmuls(module, qk, av, config.check_finite, name=name)
    qk_mm, av_mm = cast(QuantMatmul, module.apsq_qk), cast(QuantMatmul, module.apsq_av)  # set just above
    for q in (qk_mm, av_mm):  # the attention module's device and dtype
        q.to(device=module_device(module), dtype=module_dtype(module))
    qk_mm.layer_name = f"{name}.qk_matmul"
    av_mm.layer_name = f"{name}.av_matmul"
    for q, c in ((qk_mm, qk), (av_mm, av)):
        if not c.enabled:  # keep exact (mode none, 16-bit operands would still quantize)
            q.qcfg = c.__class__(**{**c.__dict__, "enabled": True, "mode": "none"})


def _check_attention_granularity(model: nn.Module, config: APSQConfig) -> None:
    """Refuse per-channel PSUM steps on attention's QK^T (its output width is the key length) before
    any layer is swapped."""
    if not config.attention_matmuls:
        return
    for name, module in model.named_modules():
        if is_supported_attention(module):
            qk = config.for_module(f"{name}.qk_matmul")
            if qk.enabled and qk.mode != "none" and qk.psum_granularity == "channel":
                raise per_channel_matmul_error(f"{name}.qk_matmul")


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QuantLayer]]:
    """``(name, layer)`` for every quantized layer of ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, QUANT_LAYER_TYPES):
            yield name, m


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
        t.add_row(Text(s.name), str(s.k), str(s.n_tiles), mode, f"{s.saturation_rate:.2e}", f"{s.rel_error:.4f}")
    (console or Console()).print(t)
