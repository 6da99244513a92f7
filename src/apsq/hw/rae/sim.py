"""Drive the RAE RTL in Amaranth's simulator: bit-exact co-simulation with the integer golden model.

:func:`simulate` is the one-call API (``partials [n, L]`` -> final codes ``[L]``); :func:`run_layers`
runs several layers back to back on one engine instance (amortising elaboration), with optional
random valid/ready back-pressure, and reports cycle counts.

Mapping of a layer onto the engine: the ``L`` output columns are cut into blocks of ``lanes``
(zero-padded); block ``b`` is output position ``b`` of its pass (bank set ``b // depth``, address
``b % depth``). For each step ``i`` the driver
sends one beat per position (``exponent e_i``, ``s2 = closing_steps(n, gs)[i]``, ``last`` on step
``n - 1``), so a layer of ``n`` steps and ``M`` positions is ``n * M`` input beats and ``M`` output
beats. Positions beyond the banks' capacity (``floor(4 / gs) * depth``) run as further passes.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from apsq.errors import APSQError, check_bits, check_int
from apsq.hw.rae.engine import NUM_BANKS, PIPELINE_LATENCY, RAE, RAEParams
from apsq.psum.accumulate import closing_steps

__all__ = ["LayerJob", "RunStats", "simulate", "run_layers", "validate_layer", "build_schedule", "scatter_outputs"]


@dataclass(frozen=True)
class LayerJob:
    """One layer for the engine: integer tile sums ``[n, L]``, exponents ``[n]``, group size."""

    partials: np.ndarray
    exponents: np.ndarray
    gs: int


@dataclass
class RunStats:
    """Cycle accounting of one :func:`run_layers` call (all layers together).

    ``cycles``: clock cycles from the first beat offered to the last code taken;
    ``beats_in``/``beats_out``: stream transfers; ``hazard_stalls``: cycles the engine refused a
    valid beat because the word it must read was still in the pipeline (read-after-write);
    ``backpressure_stalls``: cycles it refused one because the output was not taken;
    ``idle_in``: cycles the producer offered nothing (random gaps, or draining before a
    reconfiguration); ``per_pass_cycles``: input-side cycles of each pass (layer, or part of a
    layer wider than ``lanes * depth``); ``wall_s``: simulation wall time; ``cycles_per_s``: speed.
    """

    cycles: int = 0
    beats_in: int = 0
    beats_out: int = 0
    hazard_stalls: int = 0
    backpressure_stalls: int = 0
    idle_in: int = 0
    wall_s: float = 0.0
    per_pass_cycles: list[int] = field(default_factory=list)

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def fill(self) -> int:
        """Pipeline fill/drain per layer: cycles from the last input beat to its output code."""
        return PIPELINE_LATENCY


def _as_int_array(name: str, x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
            raise APSQError(f"{name} must hold integers, got dtype {x.dtype}")
        return x.detach().cpu().numpy().astype(np.int64)
    a = np.asarray(x)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise APSQError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def validate_layer(partials: object, exponents: object, gs: int, params: RAEParams) -> LayerJob:
    """Check one layer against the engine's limits; raise :class:`APSQError` before simulating.

    ``gs`` must be 1..4 (four banks), exponents within the shifter range
    ``[params.exp_min, params.exp_max]``, tile sums within ``tile_bits`` signed bits.
    """
    check_int("gs", gs, lo=1, hi=NUM_BANKS)
    t = _as_int_array("partials", partials)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise APSQError(f"partials must be [n, L] with n >= 1 steps and L >= 1 lanes, got shape {t.shape}")
    e = _as_int_array("exponents", exponents)
    if e.ndim != 1 or e.shape[0] != t.shape[0]:
        raise APSQError(f"exponents must be [n] with one exponent per step (n={t.shape[0]}), got shape {e.shape}")
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


def _pack_in(params: RAEParams, tiles: Sequence[int], exp: int, s2: int, last: int) -> int:
    """The input payload as one integer (struct fields LSB first, lanes LSB first)."""
    tb, ew = params.tile_bits, params.exp_width
    v = 0
    for lane, t in enumerate(tiles):
        v |= (int(t) & ((1 << tb) - 1)) << (lane * tb)
    off = params.lanes * tb
    v |= (exp & ((1 << ew) - 1)) << off
    v |= (s2 & 1) << (off + ew)
    v |= (last & 1) << (off + ew + 1)
    return v


def _unpack_out(params: RAEParams, word: int) -> list[int]:
    b = params.bits
    out = []
    for lane in range(params.lanes):
        c = (word >> (lane * b)) & ((1 << b) - 1)
        out.append(c - (1 << b) if c >> (b - 1) else c)
    return out


def _passes(job: LayerJob, params: RAEParams) -> list[tuple[int, int]]:
    """Column blocks of one layer: ``[(first position, positions in this pass), ...]``."""
    blocks = math.ceil(job.partials.shape[1] / params.lanes)
    cap = params.capacity(job.gs)
    return [(b0, min(cap, blocks - b0)) for b0 in range(0, blocks, cap)]


Pass = tuple[int, int, int, int, list[int]]
"""One engine pass: (layer index, gs, first position, positions M, packed input beats)."""


def build_schedule(jobs: Sequence[LayerJob], params: RAEParams) -> list[Pass]:
    """The passes and packed input beats of ``jobs`` (WS order: for each step, every position)."""
    lanes = params.lanes
    schedule: list[Pass] = []
    for li, job in enumerate(jobs):
        n, cols = job.partials.shape
        blocks = math.ceil(cols / lanes)
        padded = np.zeros((n, blocks * lanes), dtype=np.int64)
        padded[:, :cols] = job.partials
        closing = closing_steps(n, job.gs)
        for b0, m in _passes(job, params):
            beats = []
            for i in range(n):
                e = int(job.exponents[i])
                for pos in range(m):
                    cols_b = padded[i, (b0 + pos) * lanes:(b0 + pos + 1) * lanes]
                    beats.append(_pack_in(params, cols_b.tolist(), e, int(closing[i]), int(i == n - 1)))
            schedule.append((li, job.gs, b0, m, beats))
    return schedule


def scatter_outputs(
    schedule: Sequence[Pass], outputs: Sequence[Sequence[int]], jobs: Sequence[LayerJob], params: RAEParams
) -> list[np.ndarray]:
    """Reassemble the output beats (in order) into each layer's codes ``[L]``."""
    lanes = params.lanes
    total = sum(m for *_, m, _ in schedule)
    if len(outputs) != total:
        raise APSQError(f"the engine produced {len(outputs)} output beats, expected {total}")
    results = [np.zeros(math.ceil(j.partials.shape[1] / lanes) * lanes, dtype=np.int64) for j in jobs]
    k = 0
    for li, _gs, b0, m, _beats in schedule:
        for pos in range(m):
            results[li][(b0 + pos) * lanes:(b0 + pos + 1) * lanes] = outputs[k]
            k += 1
    return [r[: j.partials.shape[1]] for r, j in zip(results, jobs, strict=True)]


def run_layers(
    jobs: Sequence[LayerJob],
    params: RAEParams,
    *,
    backpressure: float = 0.0,
    seed: int = 0,
) -> tuple[list[np.ndarray], RunStats]:
    """Run ``jobs`` back to back on one RAE instance; return each layer's final codes ``[L]``.

    Args:
        jobs: validated layers (:func:`validate_layer`).
        params: the engine instance's parameters.
        backpressure: probability (0..1) that the producer inserts an idle cycle before a beat and,
            independently, that the consumer holds ``o.ready`` low in a cycle.
        seed: seed of the back-pressure pattern.
    """
    from amaranth.sim import Simulator

    if not 0.0 <= backpressure < 1.0:
        raise APSQError(f"backpressure must be a probability in [0, 1), got {backpressure}")
    dut = RAE(params)
    schedule = build_schedule(jobs, params)
    stats = RunStats()
    rng = random.Random(seed)
    outputs: list[list[int]] = []  # per pass, filled by the consumer
    total_out = sum(m for _, _, _, m, _ in schedule)
    taken = {"expected": 0}  # outputs the producer has sent beats for (waits for them before a reconfiguration)

    async def producer(ctx):
        cyc = 0
        for _li, gs, _b0, m, beats in schedule:
            # reconfigure only when the engine is idle and all outputs of the previous pass are taken
            while ctx.get(dut.busy) or len(outputs) < taken["expected"]:
                await ctx.tick()
                cyc += 1
                stats.idle_in += 1
            start = cyc
            ctx.set(dut.s0, (gs - 1) & 1)
            ctx.set(dut.s1, (gs - 1) >> 1)
            ctx.set(dut.last_pos, m - 1)
            for word in beats:
                while backpressure and rng.random() < backpressure:
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick()
                    cyc += 1
                    stats.idle_in += 1
                ctx.set(dut.i.payload.as_value(), word)
                ctx.set(dut.i.valid, 1)
                while True:
                    _, _, ready, ovalid, oready = await ctx.tick().sample(dut.i.ready, dut.o.valid, dut.o.ready)
                    cyc += 1
                    if ready:
                        break
                    if ovalid and not oready:
                        stats.backpressure_stalls += 1
                    else:
                        stats.hazard_stalls += 1
                stats.beats_in += 1
            ctx.set(dut.i.valid, 0)
            taken["expected"] += m
            stats.per_pass_cycles.append(cyc - start)

    async def consumer(ctx):
        cyc = 0
        while len(outputs) < total_out:
            ctx.set(dut.o.ready, 0 if (backpressure and rng.random() < backpressure) else 1)
            _, _, valid, ready, word = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload.as_value())
            cyc += 1
            if valid and ready:
                outputs.append(_unpack_out(params, word))
        stats.cycles = cyc
        stats.beats_out = len(outputs)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    t0 = time.perf_counter()
    sim.run()
    stats.wall_s = time.perf_counter() - t0

    codes = scatter_outputs(schedule, outputs, jobs, params)
    return codes, stats


def simulate(
    partials: object,
    exponents: object,
    *,
    gs: int,
    bits: int = 8,
    lanes: int | None = None,
    depth: int = 16,
    backpressure: float = 0.0,
    seed: int = 0,
    return_stats: bool = False,
) -> np.ndarray | tuple[np.ndarray, RunStats]:
    """Run one layer through the RAE RTL; return its final INT``bits`` codes ``[L]`` (int64).

    Args:
        partials: integer tile sums ``[n, L]`` (units of ``s_x * s_w``), ``|T| < 2^31``.
        exponents: integer ``[n]``, step ``i``'s PSUM step is ``s_i = 2^e_i`` tile-sum units;
            ``e_i`` in ``[-8, 23]`` (the default shifter range).
        gs: APSQ group size, 1..4 (static encodings ``s1 s0 = gs - 1``).
        bits: code width of the engine.
        lanes: engine width; ``None`` uses ``L`` (one position). Smaller values cut the ``L``
            columns into ``ceil(L / lanes)`` positions (bank addresses).
        depth: bank depth (the engine holds ``floor(4 / gs) * depth`` positions at once).
        backpressure, seed: random valid/ready gaps (see :func:`run_layers`).
        return_stats: also return the :class:`RunStats`.

    Equals ``psum_accumulate_int(partials, exponents, mode='apsq', gs=gs, bits=bits).code`` bit for bit.
    """
    check_bits("bits", bits)
    shape = np.shape(partials)
    if lanes is None:
        lanes = shape[1] if len(shape) == 2 else 1
    params = RAEParams(lanes=lanes, depth=depth, bits=bits)
    job = validate_layer(partials, exponents, gs, params)
    (codes,), stats = run_layers([job], params, backpressure=backpressure, seed=seed)
    return (codes, stats) if return_stats else codes
