"""``APSQConfig``: what to quantize and how (validated; loadable from dict / YAML). Torch-free.

It lives here, below every layer that needs it (``apsq.nn`` to quantize, ``apsq.hw`` to price), so that
the energy model can take a typed config without importing torch; ``apsq.nn.config`` re-exports it.

**Group-size limits, in one place** (``tests/test_gs_limits.py`` ties them together):

- :data:`GS_MAX` (65,536): what the PyTorch model accepts — any gs is a valid fake-quant computation;
- :data:`RAE_BANKS` (4): the RAE's PSUM SRAM banks (``apsq.hw.rae.NUM_BANKS`` is this constant): the
  engine closes a group from one code per bank in one step, so gs <= 4 runs on the RTL;
- an accelerator YAML's ``buffers.psum.banks`` (4 in every built-in): the energy model refuses
  (``on_limit="error"``, the CLI) or warns (the API default) above it, and prices by capacity.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apsq.errors import (
    PSUM_MODES,
    APSQError,
    check_bits,
    check_bool,
    check_choice,
    check_int,
    check_str_list,
    read_yaml,
)

LAYER_TYPES = ("linear", "conv1d", "conv2d")
LAYER_FIELDS = ("tile", "mode", "gs", "psum_bits", "weight_bits", "act_bits", "weight_per_channel", "enabled",
                "acc_bits", "psum_granularity")
PSUM_GRANULARITIES = ("tensor", "channel")
"""PSUM step granularity: one step per tile step, or one per tile step and output channel."""
ACC_BITS_MAX = 64
TILE_MAX = 1 << 16
"""Largest PE-array reduction depth accepted (65,536 K elements per PSUM step)."""
GS_MAX = 1 << 16
"""Largest APSQ group size accepted (tiles per additive requantization) by the PyTorch model."""
RAE_BANKS = 4
"""PSUM SRAM banks of the RAE (the RTL, ``apsq.hw.rae``): ``gs - 1`` pending codes plus the running ``A``,
one per bank, so the engine runs ``gs <= RAE_BANKS``; the built-in accelerators' ``buffers.psum.banks``."""


def _named_settings_only(cls: type) -> type:
    """``cls(...)`` (and ``dataclasses.replace``) with a keyword that is no field: an :class:`APSQError`
    naming it, the closest field and every allowed one, instead of Python's bare ``TypeError``."""
    init: Callable[..., None] = vars(cls)["__init__"]  # the dataclass's own
    allowed = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            hints = [f"{u!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(u, allowed, 1))
                     else repr(u) for u in unknown]
            raise APSQError(f"{cls.__name__}: unknown setting(s) {', '.join(hints)}; allowed: {', '.join(allowed)}")
        init(self, *args, **kwargs)

    setattr(cls, "__init__", __init__)  # noqa: B010  (checked first, then the dataclass's own __init__)
    return cls


@_named_settings_only
@dataclass(frozen=True)
class LayerQuantConfig:
    """Settings resolved for one layer (the global config with any matching overrides applied)."""

    tile: int = 32
    """PE-array reduction depth: K elements reduced per PSUM step."""
    mode: str = "apsq"
    """PSUM accumulation: ``none`` (exact INT32), ``psq`` (per-tile INT8), ``apsq`` (additive, grouped)."""
    gs: int = 2
    """APSQ group size (tiles per additive requantization), >= 1."""
    psum_bits: int = 8
    """PSUM code width (2..16)."""
    weight_bits: int = 8
    """Weight code width (2..16)."""
    act_bits: int = 8
    """Activation code width (2..16)."""
    weight_per_channel: bool = True
    """One power-of-two weight step per output channel (else per tensor)."""
    enabled: bool = True
    """False leaves the layer in full precision."""
    acc_bits: int | None = None
    """Baseline only (``mode="none"``): width of a narrow integer PSUM accumulator that saturates at
    every tile step (units of ``s_x * s_w``); ``None`` is exact accumulation."""
    psum_granularity: str = "tensor"
    """PSUM steps: ``tensor`` — one power of two per tile step (``[n]``, one shift for the whole PE-array
    output); ``channel`` — one per tile step and output channel (``[n, N]``, a shift amount per lane;
    ``docs/per-channel.md``). Ignored for ``mode="none"``."""

    def __post_init__(self) -> None:
        check_int("tile", self.tile, lo=1, hi=TILE_MAX)
        if self.acc_bits is not None:
            check_int("acc_bits", self.acc_bits, lo=2, hi=ACC_BITS_MAX)
            if self.mode != "none":
                raise APSQError(
                    f"acc_bits models a narrow baseline accumulator and applies to mode 'none' only; "
                    f"got mode={self.mode!r} (use psum_bits for psq/apsq)"
                )
        check_choice("mode", self.mode, PSUM_MODES)
        check_choice("psum_granularity", self.psum_granularity, PSUM_GRANULARITIES)
        check_int("gs", self.gs, lo=1, hi=GS_MAX)
        check_bits("psum_bits", self.psum_bits)
        check_bits("weight_bits", self.weight_bits)
        check_bits("act_bits", self.act_bits)
        for name in ("weight_per_channel", "enabled"):
            check_bool(name, getattr(self, name))


def unmatched_patterns(fields: list[tuple[str, str]], names: list[str],
                       hint: Callable[[str], str | None] | None = None) -> list[str]:
    """Each ``(field, pattern)`` (``("overrides", "encoder.*.fc1")``) that matches none of ``names`` (fnmatch),
    as ``"<field> pattern '<pattern>' (<hint>)"``: ``hint(pattern)`` when it gives one, else the closest names.
    One rule for ``quantize_`` (the model's layers) and the energy model (a workload's layers)."""
    bad = []
    for field_name, pattern in fields:
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            continue
        extra = hint(pattern) if hint is not None else None
        if extra is None:
            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.6)
            extra = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        bad.append(f"{field_name} pattern {pattern!r}{extra}")
    return bad


@_named_settings_only
@dataclass(frozen=True)
class APSQConfig(LayerQuantConfig):
    """Global quantization settings for :func:`apsq.quantize_`.

    Besides the per-layer fields of :class:`LayerQuantConfig` (defaults: tile 32, APSQ gs=2, W8A8,
    INT8 PSUMs):
    """

    layer_types: tuple[str, ...] = LAYER_TYPES
    """Which module types to swap: ``linear`` (nn.Linear and Hugging Face's transposed ``Conv1D``),
    ``conv1d`` (nn.Conv1d), ``conv2d`` (nn.Conv2d)."""
    attention_matmuls: bool = False
    """Also quantize attention's QK^T and AV matmuls (Hugging Face BERT, Segformer, LLaMA)."""
    exclude: tuple[str, ...] = ()
    """Module-name patterns (fnmatch) left in full precision, e.g. ``("classifier",)``."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-layer overrides: module-name pattern -> ``{field: value}``; later patterns win."""
    check_finite: bool = True
    """Raise on NaN/Inf inputs to quantized layers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # a single string is one element (never its letters): exclude="classifier" -> ("classifier",)
        object.__setattr__(self, "layer_types", check_str_list("layer_types", self.layer_types, allowed=LAYER_TYPES))
        object.__setattr__(self, "exclude", check_str_list("exclude", self.exclude))
        check_bool("attention_matmuls", self.attention_matmuls)
        check_bool("check_finite", self.check_finite)
        if not isinstance(self.overrides, dict):
            raise APSQError(f"overrides must be a mapping pattern -> settings, got {type(self.overrides).__name__}")
        for pattern, values in self.overrides.items():
            if not isinstance(pattern, str):
                raise APSQError(f"overrides keys must be module-name patterns (strings), got {pattern!r}")
            if not isinstance(values, dict):
                raise APSQError(f"overrides[{pattern!r}] must be a mapping of settings, got {values!r}")
            unknown = set(values) - set(LAYER_FIELDS)
            if unknown:
                raise APSQError(
                    f"overrides[{pattern!r}] has unknown keys {sorted(unknown)}; allowed: {', '.join(LAYER_FIELDS)}"
                )
            try:
                self._layer(values)  # validates the values
            except APSQError as exc:
                raise APSQError(f"overrides[{pattern!r}]: {exc}") from None

    def _layer(self, changes: dict[str, Any]) -> LayerQuantConfig:
        base = {f: getattr(self, f) for f in LAYER_FIELDS}
        base.update(changes)
        return LayerQuantConfig(**base)

    def for_module(self, name: str, *aliases: str) -> LayerQuantConfig:
        """The settings of module ``name`` (dotted path), overrides applied in order. ``aliases``: other
        names of the same layer (an attention matmul is ``<attn>.qk_matmul`` to ``quantize_`` and
        ``<attn>.apsq_qk`` as a module); a pattern applies when it matches any of them."""
        names = (name, *aliases)

        def hit(pattern: str) -> bool:
            return any(fnmatch.fnmatchcase(n, pattern) for n in names)

        if any(hit(p) for p in self.exclude):
            return self._layer({"enabled": False})
        changes: dict[str, Any] = {}
        for pattern, values in self.overrides.items():
            if hit(pattern):
                changes.update(values)
        return self._layer(changes)

    def replace(self, **changes: Any) -> APSQConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> APSQConfig:
        """Build from a mapping; unknown keys are an error naming them and the allowed ones."""
        if not isinstance(data, dict):
            raise APSQError(f"an APSQ config must be a mapping, got {type(data).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise APSQError(f"unknown APSQ config keys {unknown}; allowed: {', '.join(allowed)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> APSQConfig:
        """Load from a YAML file (a mapping of the fields above)."""
        return cls.from_dict(read_yaml(path, "APSQ config file") or {})


def rae_exponent_range(frac_bits: int, shift_bits: int) -> tuple[int, int]:
    """``(smallest, largest)`` per-step PSUM exponent ``e`` the RAE's shifter accepts: ``e = -frac_bits`` is a
    left shift by ``frac_bits``, ``e = 2**shift_bits - 1 - frac_bits`` the widest right shift (the shift field
    is ``shift_bits`` wide and offset by ``frac_bits``; ``docs/rae.md``). One rule for the RTL's parameters
    and the engine program."""
    return -frac_bits, (1 << shift_bits) - 1 - frac_bits

