"""The RAE's beat format and schedule, shared by every simulator backend (:mod:`apsq.hw.rae.sim`).

A layer (:class:`LayerJob`: integer tile sums ``[n, L]``, exponents ``[n]`` or ``[n, L]``, group size)
is checked against the engine's limits by :func:`validate_layer` and mapped onto the engine by
:func:`build_schedule`: the ``L`` output columns are cut into blocks of ``lanes`` (zero-padded); block
``b`` is output position ``b`` of its pass (bank set ``b // depth``, address ``b % depth``). For each
step ``i`` one beat goes in per position (``exponent e_i``, ``s2 = closing_steps(n, gs)[i]``, ``last``
on step ``n - 1``), so a layer of ``n`` steps and ``M`` positions is ``n * M`` input beats and ``M``
output beats. Positions beyond the banks' capacity (``floor(4 / gs) * depth``) run as further passes
(:class:`EnginePass`). Beats are packed as 32-bit words, LSB first, in the field order of
:meth:`apsq.hw.rae.engine.RAEParams.in_layout` (:func:`pack_beats`); the output codes come back the
same way (:func:`unpack_codes`) and :func:`scatter_outputs` puts them back into each layer's ``[L]``.
:class:`RunStats` is the cycle accounting every backend reports.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from apsq.errors import APSQError, check_int
from apsq.hw.rae.engine import NUM_BANKS, PIPELINE_LATENCY, RAEParams, check_gs
from apsq.psum.accumulate import closing_steps

__all__ = [
    "Activity",
    "EnginePass",
    "LayerJob",
    "RunStats",
    "validate_layer",
    "pack_beats",
    "words_to_int",
    "int_to_words",
    "unpack_codes",
    "unpack_out",
    "build_schedule",
    "scatter_outputs",
    "expected_activity",
    "layer_activity",
]


@dataclass(frozen=True)
class LayerJob:
    """One layer for the engine: integer tile sums ``[n, L]``, exponents ``[n]`` or ``[n, L]``, group size."""

    partials: np.ndarray
    exponents: np.ndarray
    gs: int


@dataclass
class Activity:
    """What the engine did: bank accesses by bank, requantizations and group closings.

    Measured by every simulator backend from the engine's own enables (the ``bank_rd``, ``bank_wr``,
    ``rq`` and ``acc`` ports of :class:`apsq.hw.rae.engine.RAE`), and predicted from the schedule
    alone by :func:`expected_activity` (the golden path); the two are equal (tested). Units: a bank
    access is one word of ``L`` codes (plus, with ``lane_exponents``, the twin exponent word); a
    requantization or closing is one beat, all ``L`` lanes. Padding lanes of a layer whose width is
    not a multiple of ``L`` are counted (the engine does that work); per output position a layer of
    ``n`` steps costs ``n - 1`` reads, ``n - 1`` writes and ``n`` requantizations.

    ``bank_reads[k]`` / ``bank_writes[k]``: reads / writes of bank ``k`` (0..3); ``requantizations``:
    beats requantized (round-half-up right shift and clamp; the last step's leaves as the output);
    ``accumulations``: beats that closed a group (the tile sum added to the pending codes and ``A``).
    """

    bank_reads: list[int] = field(default_factory=lambda: [0] * NUM_BANKS)
    bank_writes: list[int] = field(default_factory=lambda: [0] * NUM_BANKS)
    requantizations: int = 0
    accumulations: int = 0

    @property
    def reads(self) -> int:
        """Bank word reads in all (one aligned code per lane each: the adds of a closing)."""
        return sum(self.bank_reads)

    @property
    def writes(self) -> int:
        """Bank word writes in all."""
        return sum(self.bank_writes)

    @property
    def shifts(self) -> int:
        """Shift operations per lane: one left (alignment) shift per code read plus one right
        (requantizing) shift per requantization."""
        return self.reads + self.requantizations

    def __add__(self, other: Activity) -> Activity:
        return Activity([a + b for a, b in zip(self.bank_reads, other.bank_reads, strict=True)],
                        [a + b for a, b in zip(self.bank_writes, other.bank_writes, strict=True)],
                        self.requantizations + other.requantizations, self.accumulations + other.accumulations)

    def to_dict(self) -> dict:
        """JSON-ready counts, with the totals and shifts."""
        return {"bank_reads": list(self.bank_reads), "bank_writes": list(self.bank_writes), "reads": self.reads,
                "writes": self.writes, "requantizations": self.requantizations,
                "accumulations": self.accumulations, "shifts": self.shifts}


@dataclass
class RunStats:
    """Cycle accounting of one :func:`apsq.hw.rae.sim.run_layers` call (all layers together).

    ``cycles``: clock cycles from the first beat offered to the last code taken;
    ``beats_in``/``beats_out``: stream transfers; ``hazard_stalls``: cycles the engine refused a
    valid beat because the word it must read was still in the pipeline (read-after-write);
    ``backpressure_stalls``: cycles it refused one because the output was not taken;
    ``idle_in``: cycles the producer offered nothing (random gaps, or draining before a
    reconfiguration); ``per_pass_cycles``: input-side cycles of each pass (layer, or part of a
    layer wider than ``lanes * depth``); ``wall_s``: simulation wall time; ``cycles_per_s``: speed;
    ``activity``: bank reads/writes by bank, requantizations and closings (:class:`Activity`),
    counted from the engine's enables.
    """

    cycles: int = 0
    beats_in: int = 0
    beats_out: int = 0
    hazard_stalls: int = 0
    backpressure_stalls: int = 0
    idle_in: int = 0
    wall_s: float = 0.0
    per_pass_cycles: list[int] = field(default_factory=list)
    activity: Activity = field(default_factory=Activity)

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def fill(self) -> int:
        """Pipeline fill/drain per layer: cycles from the last input beat to its output code."""
        return PIPELINE_LATENCY


def _as_int_array(name: str, x: object) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported: no import here
    if torch is not None and isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
            raise APSQError(f"{name} must hold integers, got dtype {x.dtype}")
        return x.detach().cpu().numpy().astype(np.int64)
    a = np.asarray(x)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise APSQError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def validate_layer(partials: object, exponents: object, gs: int, params: RAEParams) -> LayerJob:
    """Check one layer against the engine's limits; raise :class:`APSQError` before simulating.

    ``partials`` integer ``[n, L]``; ``exponents`` integer ``[n]`` (one per step) or ``[n, L]`` (one per
    step and lane/output channel, needs ``params.lane_exponents``). ``gs`` must be 1..4 (four banks),
    exponents within the shifter range ``[params.exp_min, params.exp_max]``, tile sums within
    ``tile_bits`` signed bits.
    """
    check_gs(gs)
    t = _as_int_array("partials", partials)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise APSQError(f"partials must be [n, L] with n >= 1 steps and L >= 1 lanes, got shape {t.shape}")
    e = _as_int_array("exponents", exponents)
    n, cols = t.shape
    if e.ndim == 2 and e.shape == (n, cols):
        if not params.lane_exponents:
            raise APSQError(
                f"exponents of shape [n, L] = {e.shape} (one per lane) need an engine with per-lane shifts: "
                "RAEParams(lane_exponents=True); this engine takes exponents [n]"
            )
    elif e.ndim != 1 or e.shape[0] != n:
        raise APSQError(
            f"exponents must be [n] (one per step) or [n, L] (one per step and lane) with n={n}, L={cols}; "
            f"got shape {e.shape}"
        )
    lo, hi = int(e.min()), int(e.max())
    if lo < params.exp_min or hi > params.exp_max:
        raise APSQError(
            f"exponents must be in the shifter range [{params.exp_min}, {params.exp_max}] "
            f"(frac_bits={params.frac_bits}, shift_bits={params.shift_bits}); got min {lo}, max {hi}"
        )
    tmin, tmax = int(t.min()), int(t.max())
    if tmin < params.tile_min or tmax > params.tile_max:
        raise APSQError(
            f"partials overflow the {params.tile_bits}-bit tile-sum inputs: allowed "
            f"[{params.tile_min}, {params.tile_max}], got min {tmin}, max {tmax}"
        )
    return LayerJob(t, e, gs)


_M32 = np.uint64(0xFFFFFFFF)


def _put_fields(words: np.ndarray, values: np.ndarray, width: int, offset: int) -> None:
    """OR ``k`` fields of ``width`` bits, ``values`` ``[B, k]`` (two's complement for negative values),
    into the uint64 word array ``words`` ``[B, W]`` (32-bit words, LSB first): field ``j`` at bit
    ``offset + j * width``. Vectorised over beats and fields: word-aligned 32-bit fields are copied;
    narrower ones are shifted into place and summed per word (the fields do not overlap, so the sum
    is their OR)."""
    k = values.shape[1]
    if width <= 32:  # in uint32: a field fits a word, and at most its top part spills into the next
        v32 = values.astype(np.uint32)  # two's complement, modulo 2^32
        if width < 32:
            v32 &= np.uint32((1 << width) - 1)
        if width == 32 and offset % 32 == 0:
            words[:, offset // 32:offset // 32 + k] |= v32
            return
        starts = offset + width * np.arange(k)
        idx, bit = starts // 32, (starts % 32).astype(np.uint32)
        spill = bit + width > 32  # shifts below are 1..31 for these: defined for uint32
        parts = [(v32 << bit, idx)]  # wraps: the low part
        if spill.any():
            parts.append((v32[:, spill] >> (np.uint32(32) - bit[spill]), idx[spill] + 1))
        for part, target in parts:
            cols, first = np.unique(target, return_index=True)  # target is sorted: contiguous groups
            words[:, cols] |= np.add.reduceat(part, first, axis=1)
        return
    v = values.astype(np.int64, copy=False).view(np.uint64)
    if width < 64:
        v = v & np.uint64((1 << width) - 1)
    for j in range(k):
        fbit, fword = (offset + j * width) % 32, (offset + j * width) // 32
        for t in range(-(-(fbit + width) // 32)):
            chunk = (v[:, j] << np.uint64(fbit)) if t == 0 else (v[:, j] >> np.uint64(32 * t - fbit))
            words[:, fword + t] |= chunk & _M32


def pack_beats(params: RAEParams, tiles: np.ndarray, exps: np.ndarray, s2: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Input payloads as 32-bit words, LSB first: ``uint32 [B, ceil(width / 32)]``.

    ``tiles`` [B, L], ``exps`` [B] (or [B, L] with ``lane_exponents``), ``s2``/``last`` [B]; the field
    order is :meth:`RAEParams.in_layout` (lane ``l``'s tile at bit ``l * tile_bits``, then the
    exponent(s), ``s2``, ``last``). Vectorised: one numpy pass per kind of field.
    """
    tb, ew, lanes = params.tile_bits, params.exp_width, params.lanes
    n_words = -(-params.in_layout().size // 32)
    # 32-bit tile sums fill whole words: written straight into the uint32 result (wraps to two's
    # complement); the fields after them (or every field, for other tile widths) go through uint64 words
    head = lanes if tb == 32 else 0
    out = np.empty((tiles.shape[0], n_words), dtype=np.uint32)
    if head:
        out[:, :head] = tiles.astype(np.uint32)
    words = np.zeros((tiles.shape[0], n_words - head), dtype=np.uint64)
    off = -32 * head  # bit offsets relative to `words`
    if not head:
        _put_fields(words, tiles, tb, 0)
    off += lanes * tb
    if params.lane_exponents:
        _put_fields(words, exps, ew, off)
        off += lanes * ew
    else:
        _put_fields(words, exps[:, None], ew, off)
        off += ew
    _put_fields(words, np.stack([s2, last], axis=1), 1, off)
    out[:, head:] = words
    return out


def words_to_int(row: np.ndarray) -> int:
    """One packed beat (uint32 words, LSB first) as a Python integer."""
    return int.from_bytes(np.ascontiguousarray(row, dtype="<u4").tobytes(), "little")


def int_to_words(value: int, n_words: int) -> np.ndarray:
    """Inverse of :func:`words_to_int`."""
    return np.frombuffer(value.to_bytes(4 * n_words, "little"), dtype="<u4").astype(np.uint32)


def unpack_codes(params: RAEParams, words: np.ndarray) -> np.ndarray:
    """Output payloads ``uint32 [B, ceil(L * bits / 32)]`` -> signed codes ``int64 [B, L]``."""
    b = params.bits
    w = np.concatenate([words.astype(np.uint64), np.zeros((words.shape[0], 1), dtype=np.uint64)], axis=1)
    starts = b * np.arange(params.lanes)
    idx, bit = starts // 32, (starts % 32).astype(np.uint64)
    v = ((w[:, idx] >> bit) | (w[:, idx + 1] << (np.uint64(32) - bit))) & np.uint64((1 << b) - 1)
    c = v.astype(np.int64)
    return np.where(c >> (b - 1) != 0, c - (1 << b), c)


def unpack_out(params: RAEParams, word: int) -> list[int]:
    """One output payload (Python integer) -> the ``L`` signed codes."""
    n_words = -(-params.out_layout().size // 32)
    return unpack_codes(params, int_to_words(word, n_words)[None, :])[0].tolist()


def _passes(job: LayerJob, params: RAEParams) -> list[tuple[int, int]]:
    """Column blocks of one layer: ``[(first position, positions in this pass), ...]``."""
    return _column_passes(job.partials.shape[1], job.gs, params)


def _column_passes(cols: int, gs: int, params: RAEParams) -> list[tuple[int, int]]:
    blocks = math.ceil(cols / params.lanes)
    cap = params.capacity(gs)
    return [(b0, min(cap, blocks - b0)) for b0 in range(0, blocks, cap)]


@dataclass(frozen=True)
class EnginePass:
    """One engine pass: layer index, gs, first position, positions ``M``, packed input beats
    ``words`` (uint32 ``[n * M, W]``, WS order: for each step, every position)."""

    layer: int
    gs: int
    first: int
    positions: int
    words: np.ndarray

    def beats(self) -> list[int]:
        """The input beats as Python integers (for the Amaranth and Icarus drivers)."""
        return [words_to_int(r) for r in self.words]


def build_schedule(jobs: Sequence[LayerJob], params: RAEParams) -> list[EnginePass]:
    """The passes and packed input beats of ``jobs`` (vectorised, one packing per layer; exponents
    ``[n]`` are broadcast to all lanes on an engine with ``lane_exponents``)."""
    lanes = params.lanes
    schedule: list[EnginePass] = []
    for li, job in enumerate(jobs):
        n, cols = job.partials.shape
        blocks = math.ceil(cols / lanes)
        padded = np.zeros((n, blocks, lanes), dtype=np.int64)
        padded.reshape(n, -1)[:, :cols] = job.partials
        e = job.exponents
        if params.lane_exponents:
            pe = np.zeros((n, blocks, lanes), dtype=np.int64)  # padding lanes: exponent 0 (in range)
            pe.reshape(n, -1)[:, :cols] = e if e.ndim == 2 else e[:, None]
        closing = np.array(closing_steps(n, job.gs), dtype=np.int64)
        last = (np.arange(n) == n - 1).astype(np.int64)
        passes = _passes(job, params)
        # every pass's beats in one array (pass after pass; in a pass, step after step, every position)
        tiles = np.concatenate([padded[:, b0:b0 + m].reshape(n * m, lanes) for b0, m in passes])
        if params.lane_exponents:
            exps = np.concatenate([pe[:, b0:b0 + m].reshape(n * m, lanes) for b0, m in passes])
        else:
            exps = np.concatenate([np.repeat(e, m) for _, m in passes])
        s2 = np.concatenate([np.repeat(closing, m) for _, m in passes])
        lst = np.concatenate([np.repeat(last, m) for _, m in passes])
        words = pack_beats(params, tiles, exps, s2, lst)
        k = 0
        for b0, m in passes:
            schedule.append(EnginePass(li, job.gs, b0, m, words[k:k + n * m]))
            k += n * m
    return schedule


def scatter_outputs(
    schedule: Sequence[EnginePass], outputs: np.ndarray | Sequence[Sequence[int]], jobs: Sequence[LayerJob],
    params: RAEParams,
) -> list[np.ndarray]:
    """Reassemble the output beats (in order, codes ``[beats, L]``) into each layer's codes ``[L]``."""
    lanes = params.lanes
    out = np.asarray(outputs, dtype=np.int64).reshape(-1, lanes)
    total = sum(p.positions for p in schedule)
    if out.shape[0] != total:
        raise APSQError(f"the engine produced {out.shape[0]} output beats, expected {total}")
    results = [np.zeros(math.ceil(j.partials.shape[1] / lanes) * lanes, dtype=np.int64) for j in jobs]
    k = 0
    for p in schedule:
        results[p.layer][p.first * lanes:(p.first + p.positions) * lanes] = out[k:k + p.positions].reshape(-1)
        k += p.positions
    return [r[: j.partials.shape[1]] for r, j in zip(results, jobs, strict=True)]


def expected_activity(jobs: Sequence[LayerJob], params: RAEParams) -> Activity:
    """The :class:`Activity` the engine performs for ``jobs``, from the schedule alone (no simulation):
    the golden path's count, equal to what every backend measures. The sum of :func:`layer_activity`
    over the jobs."""
    act = Activity()
    for job in jobs:
        act = act + layer_activity(job.partials.shape[0], job.partials.shape[1], job.gs, params)
    return act


def layer_activity(steps: int, columns: int, gs: int, params: RAEParams) -> Activity:
    """The :class:`Activity` of one layer of ``steps`` tile steps and ``columns`` output columns at
    group size ``gs`` on the engine ``params`` — shapes only, no data (what a golden runner counts).

    Per pass (``m`` positions; position ``q`` in bank set ``q // depth``, whose banks start at
    ``base = set * gs`` for ``gs <= 2``, else 0) and step ``i``: a closing step reads the group's
    pending banks ``base .. base + slot - 1`` and, after the first group, ``A`` in ``base + gs - 1``;
    every step but the last writes bank ``base + slot`` (or ``A``'s bank when closing); every beat
    is requantized.

    Raises:
        APSQError: ``steps`` or ``columns`` below 1, ``gs`` outside 1..4.
    """
    check_int("steps", steps, lo=1)
    check_int("columns", columns, lo=1)
    check_gs(gs)
    act = Activity()
    closing = closing_steps(steps, gs)
    for _, m in _column_passes(columns, gs, params):
        per_set = np.bincount(np.arange(m) // params.depth, minlength=NUM_BANKS)
        bases = [(s * gs if gs <= 2 else 0, int(c)) for s, c in enumerate(per_set) if c]
        slot, have_a = 0, False
        for i in range(steps):
            act.requantizations += m
            if closing[i]:
                act.accumulations += m
                for base, c in bases:
                    for k in range(base, base + slot):
                        act.bank_reads[k] += c
                    if have_a:
                        act.bank_reads[base + gs - 1] += c
            if i < steps - 1:
                for base, c in bases:
                    act.bank_writes[base + (gs - 1 if closing[i] else slot)] += c
            slot, have_a = (0, True) if closing[i] else (slot + 1, have_a)
    return act
