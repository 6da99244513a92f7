"""GEMM layer shapes: the unit the energy model works on.

Every layer is ``count`` independent GEMMs ``Y[M, N] = X[M, K] · W[N, K]ᵀ`` (X: the streamed
activations, W: the second operand — weights for Linear/Conv2d, an activation for attention's
``QKᵀ`` (W = K) and ``AV`` (W = Vᵀ)). A Conv2d is its im2col GEMM: ``M = B·Ho·Wo``,
``K = Ci/groups·kh·kw``, ``N = Co/groups``, ``count = groups`` (a depthwise conv has K = kh·kw).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from apsq.config import APSQConfig, unmatched_patterns
from apsq.errors import APSQError, check_int

__all__ = ["Layer", "Workload", "LAYER_KINDS", "MAX_DIM", "config_name", "config_names", "layer_config"]

LAYER_KINDS = ("linear", "conv2d", "conv1d", "matmul")
MAX_DIM = 1 << 31
"""Largest M, K, N and count of one layer (a sane finite range; the energy model's counts are float64 and
never wrap for any shape in it: :class:`apsq.hw.dataflow.GemmShapes`)."""


@dataclass(frozen=True)
class Layer:
    """One GEMM layer (shapes in elements)."""

    name: str
    kind: str
    m: int
    """rows of X and Y (tokens, or output pixels x batch)."""
    k: int
    """reduction length (split into ceil(K / rows) PSUM tiles)."""
    n: int
    """columns of Y (output features / channels per group)."""
    count: int = 1
    """independent GEMMs of this shape (heads x batch for attention, groups for grouped convs)."""
    w_is_weight: bool = True
    """True when W is a stored parameter (weight width); False when it is an activation."""
    full_precision: bool = False
    """Left in full precision (or INT32 PSUMs) by the traced model's quantization: priced at the baseline
    PSUM width in every mode, never dropped (:func:`apsq.hw.workloads.trace`)."""
    gs: int | None = None
    """The traced quantized module's own APSQ group size (None: not a quantized module)."""
    tile: int | None = None
    """The traced quantized module's own PSUM tile (K elements per step; None: not a quantized module).
    The energy model steps K by the array's rows: a different tile warns or is refused
    (:func:`apsq.hw.energy_spec.check_traced_tiles`)."""

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise APSQError(f"layer {self.name!r}: kind must be one of {', '.join(LAYER_KINDS)}; got {self.kind!r}")
        for f in ("m", "k", "n", "count"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_DIM:
                raise APSQError(f"layer {self.name!r}: {f} must be an integer in 1 .. 2**31, got {v!r}")
        if self.gs is not None:
            check_int(f"layer {self.name!r}: gs", self.gs, lo=1)
        if self.tile is not None:
            check_int(f"layer {self.name!r}: tile", self.tile, lo=1)

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.count


def config_name(layer_name: str) -> str:
    """The module name an APSQConfig pattern sees for a traced layer (``encoder.0.attn.qk`` ->
    ``encoder.0.attn.apsq_qk``; a ``#k`` suffix of repeated layers is dropped)."""
    name = layer_name.split("#", 1)[0]
    for short, full in ((".qk", ".apsq_qk"), (".av", ".apsq_av")):
        if name.endswith(short):
            return name[: -len(short)] + full
    return name


def config_names(layer_name: str) -> tuple[str, ...]:
    """Every name an APSQConfig pattern may use for a traced layer: :func:`config_name`, and for an
    attention matmul also the name ``quantize_`` reports and matches (``encoder.0.attn.qk_matmul``)."""
    name = config_name(layer_name)
    for full, quant in ((".apsq_qk", ".qk_matmul"), (".apsq_av", ".av_matmul")):
        if name.endswith(full):
            return name, name[: -len(full)] + quant
    return (name,)


def layer_config(config: APSQConfig, layer_name: str) -> Any:
    """``config``'s settings for traced layer ``layer_name`` (a pattern may use any of its
    :func:`config_names`; the same file means the same layers to ``quantize_`` and the energy model)."""
    return config.for_module(*config_names(layer_name))


def check_config_patterns(config: APSQConfig, layers: Sequence[Layer], workload: str) -> None:
    """:class:`APSQError` naming every ``overrides`` pattern of ``config`` that matches no layer of the
    workload (a typo would silently price the default gs), with the closest layer names, as
    ``quantize_`` refuses it."""
    names = [n for ly in layers for n in config_names(ly.name)]
    bad = unmatched_patterns([("overrides", p) for p in config.overrides], names)
    if bad:
        example = ", ".join(repr(n) for n in dict.fromkeys(names[:4])) or "none"
        raise APSQError(f"gs: {'; '.join(bad)} matches no layer of workload {workload!r} (fnmatch patterns on "
                        f"module names, e.g. {example}); fix or remove it")


@dataclass(frozen=True)
class Workload:
    """A model's GEMM layers, in execution order, with the options it was built with."""

    name: str
    layers: tuple[Layer, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers:
            raise APSQError(f"workload {self.name!r} has no GEMM layers (Linear, Conv, matmul) to evaluate")
        object.__setattr__(self, "layers", tuple(self.layers))

    def __len__(self) -> int:
        return len(self.layers)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """Column arrays (int64 / bool) over layers: m, k, n, count, w_is_weight."""
        return {
            "m": np.array([ly.m for ly in self.layers], dtype=np.int64),
            "k": np.array([ly.k for ly in self.layers], dtype=np.int64),
            "n": np.array([ly.n for ly in self.layers], dtype=np.int64),
            "count": np.array([ly.count for ly in self.layers], dtype=np.int64),
            "w_is_weight": np.array([ly.w_is_weight for ly in self.layers], dtype=bool),
            "full_precision": np.array([ly.full_precision for ly in self.layers], dtype=bool),
        }

    @property
    def macs(self) -> int:
        return int(sum(ly.macs for ly in self.layers))

    @property
    def own_gs(self) -> dict[str, int]:
        """The group sizes the traced quantized model itself uses, by layer name (empty if none)."""
        return {ly.name: int(ly.gs) for ly in self.layers if ly.gs is not None and not ly.full_precision}

    def gs_array(self, gs: int | Mapping[str, int] | Sequence[int] | APSQConfig | None, default: int = 1) -> np.ndarray:
        """Per-layer APSQ group sizes.

        ``gs`` is one int for every layer, a sequence with one value per layer, a mapping of
        layer-name patterns (fnmatch; later patterns win) to group sizes, with ``default`` elsewhere, or
        an :class:`apsq.APSQConfig` (each layer's ``for_module(name).gs``, overrides applied; traced
        attention matmuls ``*.qk`` / ``*.av`` match patterns on ``*.qk_matmul`` / ``*.av_matmul``, the names
        ``quantize_`` uses, or ``*.apsq_qk`` / ``*.apsq_av``; an override matching no layer is an error).

        **Precedence with a traced quantized model** (layers with their own ``gs``, :attr:`own_gs`):
        ``gs=None`` prices the model's own group sizes (``default`` where a layer has none); an
        explicit ``gs`` that differs from the model's own on any quantized layer is an
        :class:`APSQError` naming the layer and both values — never a silent override. To price other
        group sizes, trace a model quantized with them or drop the traced ones with
        ``workload.without_own_gs()`` (``apsq energy --other-gs``).
        """
        own = self.own_gs
        if gs is None:
            return np.array([own.get(ly.name, default) for ly in self.layers], dtype=np.int64)
        out = self._gs_array(gs, default)
        for i, ly in enumerate(self.layers):
            if ly.name in own and own[ly.name] != out[i]:
                raise APSQError(
                    f"gs: workload {self.name!r} was traced from a quantized model whose layer {ly.name!r} uses "
                    f"gs={own[ly.name]}, but gs={int(out[i])} was asked for; pass gs=None (apsq energy: omit --gs and --gs-config) "
                    "to price the model's own group sizes, or workload.without_own_gs() (apsq energy: --other-gs) "
                    "to price others")
        return out

    @property
    def own_tiles(self) -> dict[str, int]:
        """The PSUM tiles the traced quantized model itself uses, by layer name (empty if none)."""
        return {ly.name: int(ly.tile) for ly in self.layers if ly.tile is not None and not ly.full_precision}

    def without_own_gs(self) -> Workload:
        """This workload without the traced model's own group sizes and tiles (any ``gs`` may then be
        priced, on the array's rows)."""
        return Workload(self.name, tuple(replace(ly, gs=None, tile=None) for ly in self.layers), dict(self.options))

    def _gs_array(self, gs: int | Mapping[str, int] | Sequence[int] | APSQConfig, default: int = 1) -> np.ndarray:
        if isinstance(gs, APSQConfig):
            check_config_patterns(gs, self.layers, self.name)
            return np.array([layer_config(gs, ly.name).gs for ly in self.layers], dtype=np.int64)
        if isinstance(gs, Mapping):
            check_int("gs", default, lo=1)
            out = np.full(len(self.layers), default, dtype=np.int64)
            for pattern, value in gs.items():
                check_int(f"gs[{pattern!r}]", value, lo=1)
                hit = [i for i, ly in enumerate(self.layers) if fnmatch.fnmatchcase(ly.name, pattern)]
                out[hit] = value
            return out
        if isinstance(gs, Sequence) and not isinstance(gs, str):
            if len(gs) != len(self.layers):
                raise APSQError(f"gs has {len(gs)} values but workload {self.name!r} has {len(self.layers)} layers")
            for i, v in enumerate(gs):
                check_int(f"gs[{i}]", v, lo=1)
            return np.asarray(gs, dtype=np.int64)
        return np.full(len(self.layers), check_int("gs", gs, lo=1), dtype=np.int64)
