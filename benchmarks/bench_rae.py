"""RAE co-simulation speed in lane-steps/s: Verilator (compiled) vs Amaranth's Python simulator.

A *lane-step* is one tile sum of one output lane through the engine (an input beat carries ``L``).
For each engine (``L`` lanes, per-step or per-lane exponents) one random layer of ``n`` steps over
all positions the banks hold is run ``--repeat`` times back to back, and compared with the integer
golden model. Reported per backend:

* ``sim_lane_steps_per_s`` — the simulation loop alone (inside the Verilator executable; the
  Amaranth simulator's ``sim.run()``);
* ``end_to_end_lane_steps_per_s`` — ``run_layers`` as a caller sees it: packing the beats, writing
  them, the process start, reading and scattering the codes (the build is cached and not counted;
  its time is reported as ``build_s`` when this run had to build).

Goal: >= 1 M lane-steps/s (issue 16 item 12). Results as JSON (``--json``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_rae.py --json results/bench/rae_bench.json

``--minilm T`` instead runs what a deploy runner sends the Verilator backend for ``--sentences`` MiniLM
sentences of ``T`` tokens: per transformer layer (6), one ``run_layers`` call per dependent stage --
Q, K, V (384 -> 384 each, 12 tile steps), QK^T (12 heads, 1 step), AV (12 heads, ceil(T / 32) steps),
O (384 -> 384), FFN up (384 -> 1536), FFN down (1536 -> 384, 48 steps) -- so 36 calls, each holding
every sentence's layer (random tile sums and exponents with those shapes; every code compared with
the golden model, which is not timed)::

    OMP_NUM_THREADS=1 python benchmarks/bench_rae.py --minilm 32 --sentences 1 --lanes 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

import numpy as np
import torch

from apsq.hw.rae import RAEParams, run_layers, validate_layer
from apsq.integer.psum import psum_accumulate_int
from apsq.machine import describe, load_average

GOAL = 1_000_000


def _layer(rng: np.random.Generator, params: RAEParams, steps: int, gs: int):
    cols = params.lanes * params.capacity(gs)
    t = rng.integers(-(1 << 24), 1 << 24, size=(steps, cols))
    e = rng.integers(6, 18, size=(steps, cols) if params.lane_exponents else steps)
    return validate_layer(t, e, gs, params)


def bench_one(params: RAEParams, backend: str, *, steps: int, repeat: int, gs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    jobs = [_layer(rng, params, steps, gs) for _ in range(repeat)]
    build_s = 0.0
    if backend == "verilator":
        from apsq.hw.rae.verilator import build_simulator

        t0 = time.perf_counter()
        _, cached = build_simulator(params)
        build_s = 0.0 if cached else time.perf_counter() - t0
    t0 = time.perf_counter()
    codes, stats = run_layers(jobs, params, backend=backend)
    e2e = time.perf_counter() - t0
    for j, c in zip(jobs, codes, strict=True):
        g = psum_accumulate_int(torch.tensor(j.partials), torch.tensor(j.exponents), mode="apsq", gs=gs).code
        if not np.array_equal(c, g.numpy()):
            raise SystemExit(f"MISMATCH on {backend}, L={params.lanes}")
    lane_steps = stats.beats_in * params.lanes
    return {
        "backend": backend,
        "lanes": params.lanes,
        "depth": params.depth,
        "lane_exponents": params.lane_exponents,
        "gs": gs,
        "steps": steps,
        "layers": repeat,
        "beats": stats.beats_in,
        "cycles": stats.cycles,
        "lane_steps": lane_steps,
        "sim_s": round(stats.wall_s, 6),
        "end_to_end_s": round(e2e, 6),
        "sim_lane_steps_per_s": round(lane_steps / stats.wall_s),
        "end_to_end_lane_steps_per_s": round(lane_steps / e2e),
        "sim_cycles_per_s": round(stats.cycles / stats.wall_s),
        "build_s": round(build_s, 1),
        "bit_exact": True,
    }


def minilm_calls(rng: np.random.Generator, params: RAEParams, tokens: int, sentences: int, gs: int):
    """The 36 ``run_layers`` calls of ``sentences`` MiniLM sentences (each call: a list of jobs)."""
    def job(n: int, cols: int):
        t = rng.integers(-(1 << 19), 1 << 19, size=(n, cols))
        e = rng.integers(6, 14, size=(n, cols) if params.lane_exponents else n)
        return validate_layer(t, e, gs, params)

    s, heads, hd = sentences, 12, 32
    stages = [[job(12, tokens * 384) for _ in range(3 * s)],  # Q, K, V
              [job(-(-hd // 32), tokens * tokens) for _ in range(heads * s)],  # QK^T per head
              [job(-(-tokens // 32), tokens * hd) for _ in range(heads * s)],  # AV per head
              [job(12, tokens * 384) for _ in range(s)],  # O
              [job(12, tokens * 1536) for _ in range(s)],  # FFN up
              [job(48, tokens * 384) for _ in range(s)]]  # FFN down
    return stages * 6  # six transformer layers (random data reused across layers: same shapes)


def bench_minilm(params: RAEParams, *, tokens: int, sentences: int, gs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    calls = minilm_calls(rng, params, tokens, sentences, gs)
    from apsq.hw.rae.verilator import build_simulator

    t0 = time.perf_counter()
    _, cached = build_simulator(params)
    build_s = 0.0 if cached else time.perf_counter() - t0
    e2e = sim = 0.0
    beats = cycles = 0
    for jobs in calls:
        t0 = time.perf_counter()
        codes, stats = run_layers(jobs, params, backend="verilator")
        e2e += time.perf_counter() - t0
        sim += stats.wall_s
        beats += stats.beats_in
        cycles += stats.cycles
        for j, c in zip(jobs, codes, strict=True):
            g = psum_accumulate_int(torch.from_numpy(j.partials), torch.from_numpy(j.exponents), mode="apsq",
                                    gs=gs).code.numpy()
            if not np.array_equal(c, g):
                raise SystemExit(f"MISMATCH on verilator, L={params.lanes}")
    lane_steps = beats * params.lanes
    return {
        "backend": "verilator", "workload": f"minilm T={tokens}", "sentences": sentences, "calls": len(calls),
        "lanes": params.lanes, "depth": params.depth, "lane_exponents": params.lane_exponents, "gs": gs,
        "beats": beats, "cycles": cycles, "lane_steps": lane_steps, "sim_s": round(sim, 4),
        "end_to_end_s": round(e2e, 4), "sim_lane_steps_per_s": round(lane_steps / sim),
        "end_to_end_lane_steps_per_s": round(lane_steps / e2e),
        "sentences_per_min": round(60 * sentences / e2e, 2), "build_s": round(build_s, 1), "bit_exact": True,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", default="4,8,32", help="comma-separated engine widths")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=40, help="layers per Verilator run")
    ap.add_argument("--gs", type=int, default=2)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--amaranth-steps", type=int, default=16, help="steps of the (slow) Amaranth comparison")
    ap.add_argument("--minilm", type=int, default=None, metavar="T",
                    help="instead: the Verilator calls of MiniLM sentences of T tokens (see the module doc)")
    ap.add_argument("--sentences", type=int, default=1, help="sentences per call with --minilm")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    args.started = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), load_average())
    rows = []
    if args.minilm is not None:
        for lanes in (int(x) for x in args.lanes.split(",")):
            for lane_exp in (False, True):
                params = RAEParams(lanes=lanes, depth=args.depth, lane_exponents=lane_exp)
                r = bench_minilm(params, tokens=args.minilm, sentences=args.sentences, gs=args.gs, seed=lanes)
                rows.append(r)
                print(f"L={lanes:3d} {'per-lane' if lane_exp else 'per-step'} MiniLM T={args.minilm} x "
                      f"{args.sentences}: {r['lane_steps']:,} lane-steps in {r['calls']} calls: sim "
                      f"{r['sim_lane_steps_per_s']:>12,}/s, end to end {r['end_to_end_lane_steps_per_s']:>12,}/s, "
                      f"{r['sentences_per_min']} sentences/min" + (f" (build {r['build_s']} s)" if r["build_s"] else ""),
                      flush=True)
        _write(args, rows)
        return
    for lanes in (int(x) for x in args.lanes.split(",")):
        for lane_exp in (False, True):
            params = RAEParams(lanes=lanes, depth=args.depth, lane_exponents=lane_exp)
            rows.append(bench_one(params, "verilator", steps=args.steps, repeat=args.repeat, gs=args.gs, seed=lanes))
            rows.append(bench_one(params, "amaranth", steps=args.amaranth_steps, repeat=1, gs=args.gs, seed=lanes))
            for r in rows[-2:]:
                print(f"L={lanes:3d} {'per-lane' if lane_exp else 'per-step'} {r['backend']:9s} "
                      f"{r['lane_steps']:>10,} lane-steps: sim {r['sim_lane_steps_per_s']:>13,}/s, "
                      f"end to end {r['end_to_end_lane_steps_per_s']:>13,}/s"
                      + (f" (build {r['build_s']} s)" if r["build_s"] else ""), flush=True)
    best = max(r["end_to_end_lane_steps_per_s"] for r in rows if r["backend"] == "verilator")
    print(f"best Verilator end to end: {best:,} lane-steps/s (goal >= {GOAL:,}: {'met' if best >= GOAL else 'NOT met'})")
    _write(args, rows)


def _write(args: argparse.Namespace, rows: list[dict]) -> None:
    if args.json:
        out = {
            "command": "OMP_NUM_THREADS=1 python benchmarks/bench_rae.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                if v is not None and k not in ("json", "started")),
            "commit": _commit(),
            "started_utc": args.started[0],
            "goal_lane_steps_per_s": GOAL,
            "machine": {**describe(), "load_average_start": args.started[1], "load_average_end": load_average(),
                        "python": platform.python_version()},
            "results": rows,
        }
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")
        print(f"wrote {args.json}")


def _commit() -> str:
    """The short hash of the checkout this script runs from ("" outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=False).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
