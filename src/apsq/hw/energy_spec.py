"""What one energy point is, besides the workload: a typed, frozen, validated :class:`EnergySpec`.

The energy model's entry point used to take 14 loose parameters and a ``gs`` recognised by duck typing;
:class:`EnergySpec` validates every field once, types ``gs`` (an int, a pattern mapping, one value per
layer, an :class:`apsq.config.APSQConfig` — imported torch-free — or ``None`` for a traced model's own),
and resolves the PSUM tile against the array (:func:`resolve_tile`) and the PSUM banks once, when it is
made. :func:`apsq.hw.energy.evaluate` / :func:`~apsq.hw.energy.compare` build one from their arguments
(unchanged signatures) or take one directly::

    spec = EnergySpec("ws", gs=2, schedule="tiled", on_limit="error")
    compare(workload, spec)           # baseline vs spec.mode, one spec for both

The limits a gs meets are stated in one place, :mod:`apsq.config` (``GS_MAX``, ``RAE_BANKS``, the
YAML's ``buffers.psum.banks``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Union

import numpy as np

from apsq.config import GS_MAX, APSQConfig
from apsq.errors import PSUM_MODES, APSQError, check_bits, check_bool, check_choice, check_int
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.cost import PSUM_GRANULARITIES
from apsq.hw.dataflow import DATAFLOWS
from apsq.hw.dataflow.common import SPILL_RULES
from apsq.hw.mapper import SCHEDULES

__all__ = ["EnergySpec", "GsSpec", "LIMIT_POLICIES", "resolve_tile", "check_gs_banks"]

GsSpec = Union[int, Mapping[str, int], tuple[int, ...], APSQConfig, None]
"""A group-size specification: one int, ``{layer-name pattern: gs}``, one gs per layer, an
:class:`APSQConfig` (per-layer gs and tile from its overrides) or ``None`` (a traced quantized model's
own gs, else 1; see :meth:`apsq.hw.workloads.Workload.gs_array`)."""
LIMIT_POLICIES = ("warn", "error")
"""What a limit violation (gs above the PSUM banks, a config tile other than the array's rows) does."""


def resolve_tile(gs: Any, acc: Accelerator, tile: int | None = None, override_tile: bool = False,
                 on_mismatch: str = "error") -> int | None:
    """The PSUM tile of a quantization config checked against the array's reduction depth (``rows``).

    ``gs`` may be an :class:`apsq.APSQConfig` (its ``tile`` and per-layer overrides' tiles), ``tile`` an
    explicit value. The energy model steps K by ``pe_array.rows``; a config that trains with another
    tile describes a different accumulation, so a mismatch is an :class:`APSQError` (``on_mismatch=
    "error"``, the CLI) or a :class:`UserWarning` (``"warn"``) unless ``override_tile`` says the mismatch
    is on purpose; the array's rows are then priced. Returns the tile in force, or ``None`` when nothing
    was given.
    """
    tiles: set[int] = set()
    if tile is not None:
        tiles.add(check_int("tile", tile, lo=1))
    if isinstance(gs, APSQConfig):
        tiles.add(int(gs.tile))
        for values in gs.overrides.values():
            if "tile" in values:
                tiles.add(int(values["tile"]))
    if not tiles:
        return None
    rows = acc.pe_array.rows
    bad = sorted(t for t in tiles if t != rows)
    if bad and not override_tile:
        if on_mismatch == "warn":
            warnings.warn(
                f"the quantization config's PSUM tile {bad[0]} differs from pe_array.rows = {rows} of {acc.name!r}: "
                f"pricing {rows}-deep tiles (pass override_tile=True to say this is on purpose)",
                UserWarning, stacklevel=4)
            return rows
        raise APSQError(
            f"the quantization config's PSUM tile {bad if len(bad) > 1 else bad[0]} does not match the accelerator's "
            f"reduction depth pe_array.rows = {rows} ({acc.name!r}); train with tile={rows}, use an accelerator "
            f"with rows={bad[0]}, or pass override_tile=True (--override-tile) to price {rows}-deep tiles anyway"
        )
    return rows


def check_traced_tiles(tiles: dict[str, int], acc: Accelerator, override_tile: bool = False,
                       on_mismatch: str = "warn") -> None:
    """A traced quantized model's own PSUM tiles (:attr:`apsq.hw.workloads.Workload.own_tiles`) checked
    against the array's rows, by the rule of :func:`resolve_tile`: a tile other than ``rows`` warns
    (``"warn"``) or is an :class:`APSQError` (``"error"``, the CLI) naming the layer, unless
    ``override_tile``; the array's rows are then priced."""
    rows = acc.pe_array.rows
    bad = {n: t for n, t in tiles.items() if t != rows}
    if not bad or override_tile:
        return
    name, tile = next(iter(bad.items()))
    where = f"layer {name!r}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
    if on_mismatch == "warn":
        warnings.warn(f"the traced quantized model's PSUM tile {tile} ({where}) differs from pe_array.rows = {rows} "
                      f"of {acc.name!r}: pricing {rows}-deep tiles (pass override_tile=True to say this is on purpose)",
                      UserWarning, stacklevel=4)
        return
    raise APSQError(
        f"the traced quantized model's PSUM tile {tile} ({where}) does not match the accelerator's reduction depth "
        f"pe_array.rows = {rows} ({acc.name!r}); quantize with tile={rows}, use an accelerator with rows={tile}, "
        f"or pass override_tile=True (--override-tile) to price {rows}-deep tiles anyway")


def check_gs_banks(gs_arr: np.ndarray, acc: Accelerator, names: Sequence[str], error: bool = False) -> None:
    """gs above the PSUM buffer's banks (the RAE's, 4 by default) warns, or raises when ``error``.

    The RAE reads a group's gs-1 pending codes and A in one step from separate banks (method doc §7),
    so gs <= banks. The energy model can still price a larger gs by capacity.
    """
    banks = acc.buffers.psum.banks
    over = np.flatnonzero(gs_arr > banks)
    if over.size == 0:
        return
    i = int(over[0])
    msg = (f"gs={int(gs_arr[i])} for layer {names[i]!r} exceeds the PSUM buffer's {banks} banks "
           f"(buffers.psum.banks of {acc.name!r}); the RAE closes a group from one code per bank, so gs must be "
           f"<= {banks}" + (f" ({over.size} layers affected)" if over.size > 1 else ""))
    if error:
        raise APSQError(msg)
    warnings.warn(msg + "; priced by capacity only", UserWarning, stacklevel=4)


def _int(v: Any) -> Any:
    """A numpy integer as a Python int (other values unchanged, for check_int to name)."""
    return int(v) if isinstance(v, np.integer) else v


def _check_gs(gs: Any) -> GsSpec:
    """``gs`` validated and frozen (a mapping becomes read-only, a sequence a tuple)."""
    if gs is None or isinstance(gs, APSQConfig):
        return gs
    if isinstance(gs, Mapping):
        for pattern, value in gs.items():
            if not isinstance(pattern, str):
                raise APSQError(f"gs: mapping keys must be layer-name patterns (strings), got {pattern!r}")
            check_int(f"gs[{pattern!r}]", value, lo=1, hi=GS_MAX)
        return MappingProxyType(dict(gs))
    if isinstance(gs, Sequence) and not isinstance(gs, str):
        for i, v in enumerate(gs):
            check_int(f"gs[{i}]", v, lo=1, hi=GS_MAX)
        return tuple(gs)
    if isinstance(gs, int) and not isinstance(gs, bool):
        return check_int("gs", gs, lo=1, hi=GS_MAX)
    raise APSQError(f"gs must be an int, a mapping pattern -> gs, one gs per layer, an APSQConfig or None; "
                    f"got {type(gs).__name__}")


def _check_widths(mode: str, psum_bits: int, baseline_bits: Any, acc: Accelerator) -> None:
    """Stored PSUMs are the accumulator's sums, requantized (psq / apsq) or stored whole (the baseline): a
    stored width above ``acc_bits`` stores bits the accumulator never had. Until this session
    ``--psum-bits 20`` on a 16-bit accumulator was priced as a 25 % larger PSUM term without a word. Beside
    psq / apsq, a baseline narrower than ``psum_bits`` is refused too (until 2026-12-08 ``--baseline-bits 4
    --psum-bits 8`` printed a negative saving as if it were a comparison)."""
    if mode != "none" and psum_bits > acc.acc_bits:
        raise APSQError(f"psum_bits = {psum_bits} is wider than the accumulator of accelerator {acc.name!r} "
                        f"(acc_bits = {acc.acc_bits}): a stored PSUM code holds at most the accumulator's bits; "
                        f"give psum_bits (--psum-bits) in 1..{acc.acc_bits}")
    widths = () if baseline_bits is None else (baseline_bits,) if isinstance(baseline_bits, int) else baseline_bits
    for i, b in enumerate(widths):
        where = "" if isinstance(baseline_bits, int) else f"[{i}]"
        if b > acc.acc_bits:
            raise APSQError(f"baseline_bits{where} = {b} is wider than the accumulator of accelerator {acc.name!r} "
                            f"(acc_bits = {acc.acc_bits}); give baseline_bits (--baseline-bits) in 1..{acc.acc_bits}")
        if mode != "none" and b < psum_bits:  # compare(): the baseline column, or a model's full-precision layers
            raise APSQError(f"baseline_bits{where} = {b} is narrower than the {mode} PSUMs it is compared with "
                            f"(psum_bits = {psum_bits}): the full-precision baseline would store fewer bits than "
                            f"the quantized one; give baseline_bits (--baseline-bits) in {psum_bits}..{acc.acc_bits} "
                            f"or a smaller psum_bits (--psum-bits)")


@dataclass(frozen=True)
class EnergySpec:
    """One energy point besides the workload (validated on construction; errors are :class:`APSQError`).

    ``dataflow``: ``is`` | ``ws`` | ``os``. ``mode``: ``none`` | ``psq`` | ``apsq`` (``compare`` prices
    ``none`` beside it). ``gs``: :data:`GsSpec`. ``psum_bits``: stored PSUM width in psq/apsq (1..64).
    ``accelerator``: default the 28 nm INT8 one. ``baseline_bits``: the stored width of mode ``none``
    (one or one per layer) and of layers left in full precision. ``schedule``: ``untiled`` | ``tiled``;
    ``spill``: ``fractional`` | ``all-or-nothing`` | ``zigzag``; ``psum_granularity``: ``tensor`` |
    ``channel`` | ``None`` (an APSQConfig's per layer, else tensor). ``tile`` / an APSQConfig's tile
    must equal ``pe_array.rows`` unless ``override_tile``. ``gs_above_banks`` and ``tile_mismatch``:
    ``warn`` (the API's default) or ``error`` (``apsq energy``); ``on_limit`` sets both at once.

    Resolved once, here: :attr:`rows` (the priced PSUM tile, checked against the config's) and
    :attr:`banks` (the PSUM buffer's, the gs limit on the engine); the per-layer gs are checked against
    :attr:`banks` when a workload gives them names (:func:`check_gs_banks`).
    """

    dataflow: str
    mode: str = "apsq"
    gs: GsSpec = None
    psum_bits: int = 8
    accelerator: Accelerator | None = None
    baseline_bits: int | tuple[int, ...] | None = None
    schedule: str = "untiled"
    spill: str = "fractional"
    psum_granularity: str | None = None
    tile: int | None = None
    override_tile: bool = False
    gs_above_banks: str = "warn"
    tile_mismatch: str = "warn"
    on_limit: str | None = None
    rows: int = field(init=False)
    """The PSUM tile priced: ``accelerator.pe_array.rows`` (checked against the config's tile)."""
    banks: int = field(init=False)
    """The PSUM buffer's banks: the largest gs the engine closes in one step."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_choice("dataflow", self.dataflow, tuple(DATAFLOWS))
        check_choice("mode", self.mode, PSUM_MODES)
        set_(self, "gs", _check_gs(self.gs))
        check_bits("psum_bits", self.psum_bits, lo=1, hi=64)
        acc = default_accelerator() if self.accelerator is None else self.accelerator
        if not isinstance(acc, Accelerator):
            raise APSQError(f"accelerator must be an apsq.hw.accelerator.Accelerator (load_accelerator(...)), "
                            f"got {type(acc).__name__}")
        set_(self, "accelerator", acc)
        bb = self.baseline_bits
        if bb is not None:
            if isinstance(bb, (int, np.integer)) and not isinstance(bb, bool):
                set_(self, "baseline_bits", check_bits("baseline_bits", _int(bb), lo=1, hi=64))
            elif (isinstance(bb, Sequence) and not isinstance(bb, str)) or (isinstance(bb, np.ndarray) and bb.ndim == 1):
                set_(self, "baseline_bits", tuple(check_bits(f"baseline_bits[{i}]", _int(v), lo=1, hi=64)
                                                  for i, v in enumerate(bb)))
            else:
                raise APSQError(f"baseline_bits must be an int or one int per layer, got {type(bb).__name__}")
        _check_widths(self.mode, self.psum_bits, self.baseline_bits, acc)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("spill", self.spill, SPILL_RULES)
        if self.psum_granularity is not None:
            check_choice("psum_granularity", self.psum_granularity, PSUM_GRANULARITIES)
        if self.tile is not None:
            check_int("tile", self.tile, lo=1)
        check_bool("override_tile", self.override_tile)
        if self.on_limit is not None:
            check_choice("on_limit", self.on_limit, LIMIT_POLICIES)
            set_(self, "gs_above_banks", self.on_limit)
            set_(self, "tile_mismatch", self.on_limit)
        check_choice("gs_above_banks", self.gs_above_banks, LIMIT_POLICIES)
        check_choice("tile_mismatch", self.tile_mismatch, LIMIT_POLICIES)
        resolve_tile(self.gs, acc, self.tile, self.override_tile, self.tile_mismatch)
        set_(self, "rows", acc.pe_array.rows)
        set_(self, "banks", acc.buffers.psum.banks)

    @property
    def acc(self) -> Accelerator:
        """The accelerator (never None once made)."""
        assert self.accelerator is not None
        return self.accelerator

    def with_mode(self, mode: str) -> EnergySpec:
        """The same point in another PSUM ``mode`` (tile and banks stay resolved: no repeated warnings)."""
        return self._evolve(mode=check_choice("mode", mode, PSUM_MODES))

    def without_baseline_bits(self) -> EnergySpec:
        """The same point with the accelerator's ``acc_bits`` as the baseline width."""
        return self._evolve(baseline_bits=None)

    def _evolve(self, **changes: Any) -> EnergySpec:
        """A copy with already-validated ``changes`` (``__post_init__`` is not run again)."""
        twin = object.__new__(EnergySpec)
        for f in dataclasses.fields(self):
            object.__setattr__(twin, f.name, changes.get(f.name, getattr(self, f.name)))
        return twin

    @classmethod
    def of(cls, dataflow: str | EnergySpec, mode: str = "apsq", gs: Any = None, psum_bits: int = 8,
           accelerator: Accelerator | None = None, **options: Any) -> EnergySpec:
        """``dataflow`` if it is already a spec (then nothing else may be given), else a new spec."""
        if isinstance(dataflow, EnergySpec):
            if options:
                raise APSQError(f"give the energy options in the EnergySpec, not beside it: {sorted(options)}")
            return dataflow
        allowed = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise APSQError(f"unknown energy options {unknown}; allowed: {', '.join(sorted(allowed - {'dataflow'}))}")
        return cls(dataflow, mode, gs, psum_bits, accelerator, **options)
