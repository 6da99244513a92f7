"""Backend ``amaranth``: the RAE RTL as written, in Amaranth's Python simulator (~10^3 cycles/s).

:func:`run_layers_amaranth` drives one :class:`apsq.hw.rae.engine.RAE` instance with the packed beats of
:func:`apsq.hw.rae.beats.build_schedule` through two testbenches: a producer that reconfigures the
engine (``s0``, ``s1``, ``last_pos``) only when it is idle and every output of the previous pass was
taken, then offers one beat per cycle; and a consumer that takes every output beat. Optional random
valid/ready gaps (back-pressure). Call it through :func:`apsq.hw.rae.sim.run_layers`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np
from amaranth.sim import Simulator

from apsq.hw.rae.beats import LayerJob, RunStats, build_schedule, scatter_outputs, unpack_out
from apsq.hw.rae.engine import NUM_BANKS, RAE, RAEParams

__all__ = ["run_layers_amaranth"]


def run_layers_amaranth(
    jobs: Sequence[LayerJob], params: RAEParams, *, backpressure: float = 0.0, seed: int = 0
) -> tuple[list[np.ndarray], RunStats]:
    """Run ``jobs`` back to back on one RAE instance in Amaranth's simulator; (codes per layer ``[L]``,
    stats). ``backpressure``: probability (0..1) of an idle producer cycle before a beat and, drawn
    independently, of the consumer holding ``o.ready`` low; ``seed`` seeds that pattern."""
    dut = RAE(params)
    schedule = build_schedule(jobs, params)
    stats = RunStats()
    rng = random.Random(seed)
    outputs: list[list[int]] = []  # per pass, filled by the consumer
    total_out = sum(p.positions for p in schedule)
    taken = {"expected": 0}  # outputs the producer has sent beats for (waits for them before a reconfiguration)

    async def producer(ctx):
        cyc = 0
        for ps in schedule:
            gs, m = ps.gs, ps.positions
            # reconfigure only when the engine is idle and all outputs of the previous pass are taken
            while ctx.get(dut.busy) or len(outputs) < taken["expected"]:
                await ctx.tick()
                cyc += 1
                stats.idle_in += 1
            start = cyc
            ctx.set(dut.s0, (gs - 1) & 1)
            ctx.set(dut.s1, (gs - 1) >> 1)
            ctx.set(dut.last_pos, m - 1)
            for word in ps.beats():
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

    act = stats.activity

    async def consumer(ctx):
        cyc = 0
        while len(outputs) < total_out:
            ctx.set(dut.o.ready, 0 if (backpressure and rng.random() < backpressure) else 1)
            _, _, valid, ready, word, rd, wr, rq, acc = await ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload.as_value(), dut.bank_rd, dut.bank_wr, dut.rq, dut.acc)
            cyc += 1
            for k in range(NUM_BANKS):  # the engine's own enables, as they were at this clock edge
                act.bank_reads[k] += (rd >> k) & 1
                act.bank_writes[k] += (wr >> k) & 1
            act.requantizations += rq
            act.accumulations += acc
            if valid and ready:
                outputs.append(unpack_out(params, word))
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
