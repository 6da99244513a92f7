"""Large random equivalence runs: RTL (compiled, Verilator) == integer golden model, stream by stream.

A *stream* is one output column of one layer: ``n`` tile sums, ``n`` exponents, one group size, one
final INT8 code. :func:`random_layers` draws layers that stress what can go wrong — all group sizes,
``n`` from 1 (shorter than a group) to 16 (several groups and a short last one), magnitudes from tiny
to the 32-bit rails (both rails saturate), exponents over the whole shifter range with the extremes
``-8`` and ``23`` drawn on purpose, per step or per step and lane — and :func:`run_equivalence` runs
them through the engine in batches and compares every code with
:func:`apsq.integer.psum.psum_accumulate_int` (``apsq rae equivalence``; ``results/rae/equivalence/``).
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from apsq.errors import APSQError, check_int
from apsq.hw.rae.engine import NUM_BANKS, RAEParams
from apsq.hw.rae.sim import run_layers, validate_layer
from apsq.integer.psum import psum_accumulate_int
from apsq.machine import describe

__all__ = ["random_layers", "run_equivalence", "EXPONENT_KINDS", "MAGNITUDES"]

MAGNITUDES = (1, 6, 14, 20, 28, 31)
"""log2 of the tile-sum magnitude bound; 31 spans the whole signed 32-bit input (saturates)."""
EXPONENT_KINDS = ("uniform", "extremes", "all_min", "all_max", "narrow")
"""How a layer's exponents are drawn: uniform over the shifter range; only its two ends; all at the
minimum (left shifts by FB); all at the maximum; a narrow band (+-2) around a random base."""


@dataclass(frozen=True)
class RandomLayer:
    """One drawn layer and the labels the summary counts it under."""

    partials: np.ndarray
    exponents: np.ndarray
    gs: int
    magnitude: int
    exponent_kind: str


def _exponents(rng: np.random.Generator, kind: str, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    if kind == "uniform":
        return rng.integers(lo, hi + 1, size=shape)
    if kind == "extremes":
        return rng.choice(np.array([lo, hi]), size=shape)
    if kind == "all_min":
        return np.full(shape, lo)
    if kind == "all_max":
        return np.full(shape, hi)
    base = int(rng.integers(lo, hi + 1))
    return np.clip(base + rng.integers(-2, 3, size=shape), lo, hi)


def random_layers(
    rng: np.random.Generator, params: RAEParams, streams: int, *, max_steps: int = 16, max_cols: int = 256
) -> Iterator[RandomLayer]:
    """Layers with ``streams`` columns in all; per-lane exponents ``[n, C]`` when the engine has them."""
    left = streams
    while left > 0:
        gs = int(rng.integers(1, NUM_BANKS + 1))
        n = int(rng.integers(1, max_steps + 1))
        cols = min(left, int(rng.integers(1, max_cols + 1)))
        mag = int(rng.choice(MAGNITUDES))
        kind = str(rng.choice(EXPONENT_KINDS))
        t = rng.integers(-(1 << mag), 1 << mag, size=(n, cols), dtype=np.int64)
        if mag == 31 and rng.random() < 0.25:  # the exact rails as well
            t[rng.random(size=t.shape) < 0.5] = params.tile_max
            t[rng.random(size=t.shape) < 0.3] = params.tile_min
        shape = (n, cols) if params.lane_exponents else (n,)
        e = _exponents(rng, kind, shape, params.exp_min, params.exp_max).astype(np.int64)
        left -= cols
        yield RandomLayer(t, e, gs, mag, kind)


def run_equivalence(
    streams: int,
    *,
    lanes: int = 8,
    depth: int = 16,
    seed: int = 0,
    batch_streams: int = 50_000,
    backend: str = "verilator",
    backpressure: float = 0.25,
    max_cols: int = 256,
    progress: Callable[[int, int], object] | None = None,
) -> dict:
    """Run ``streams`` random streams, half on the per-step engine and half on the per-lane one.

    Every second batch runs with random valid/ready gaps (``backpressure``); layers have 1..``max_cols``
    columns (streams). Returns a JSON-ready
    summary; ``mismatches`` must be 0. ``progress(done, total)`` is called after each batch.

    Raises:
        APSQError: bad arguments, a missing simulator, or a failed simulation.
    """
    check_int("streams", streams, lo=1)
    check_int("batch_streams", batch_streams, lo=1)
    rng = np.random.default_rng(seed)
    engines = [RAEParams(lanes=lanes, depth=depth), RAEParams(lanes=lanes, depth=depth, lane_exponents=True)]
    counts: Counter[str] = Counter()
    per_engine = []
    done = 0
    mismatch_examples: list[dict] = []
    t0 = time.perf_counter()
    sim_s = golden_s = 0.0
    batch = 0
    for k, params in enumerate(engines):
        share = streams // 2 + (streams % 2 if k == 0 else 0)
        e_stats: Counter[str] = Counter()
        left = share
        while left > 0:
            size = min(batch_streams, left)
            layers = list(random_layers(rng, params, size, max_cols=max_cols))
            jobs = [validate_layer(lay.partials, lay.exponents, lay.gs, params) for lay in layers]
            bp = backpressure if batch % 2 else 0.0
            ts = time.perf_counter()
            codes, stats = run_layers(jobs, params, backpressure=bp, seed=seed + batch, backend=backend)
            sim_s += time.perf_counter() - ts
            ts = time.perf_counter()
            for lay, c in zip(layers, codes, strict=True):
                g = psum_accumulate_int(torch.from_numpy(lay.partials), torch.from_numpy(lay.exponents),
                                        mode="apsq", gs=lay.gs).code.numpy()
                bad = np.flatnonzero(c != g)
                cols = lay.partials.shape[1]
                e_stats["streams"] += cols
                e_stats["lane_steps"] += cols * lay.partials.shape[0]
                e_stats["mismatches"] += int(bad.size)
                e_stats[f"gs{lay.gs}"] += cols
                e_stats[f"exp_{lay.exponent_kind}"] += cols
                e_stats[f"mag_{lay.magnitude}"] += cols
                rails = [-(1 << (params.bits - 1)), (1 << (params.bits - 1)) - 1]
                e_stats["saturated_outputs"] += int(np.isin(g, rails).sum())
                e_stats["short_last_group"] += cols if lay.partials.shape[0] % lay.gs else 0
                e_stats["n_lt_gs"] += cols if lay.partials.shape[0] < lay.gs else 0
                if bad.size and len(mismatch_examples) < 5:
                    j = int(bad[0])
                    mismatch_examples.append({
                        "gs": lay.gs, "tiles": lay.partials[:, j].tolist(),
                        "exponents": (lay.exponents[:, j] if lay.exponents.ndim == 2 else lay.exponents).tolist(),
                        "rtl": int(c[j]), "golden": int(g[j]),
                    })
            golden_s += time.perf_counter() - ts
            e_stats["layers"] += len(layers)
            e_stats["cycles"] += stats.cycles
            e_stats["beats_in"] += stats.beats_in
            e_stats["batches_with_backpressure"] += int(bp > 0)
            left -= size
            done += size
            batch += 1
            if progress is not None:
                progress(done, streams)
        per_engine.append({
            "lanes": params.lanes, "depth": params.depth, "bits": params.bits,
            "lane_exponents": params.lane_exponents,
            "exponent_range": [params.exp_min, params.exp_max], **dict(sorted(e_stats.items())),
        })
        counts.update(e_stats)
    wall = time.perf_counter() - t0
    if counts["streams"] != streams:
        raise APSQError(f"internal: ran {counts['streams']} streams, expected {streams}")
    return {
        "streams": counts["streams"],
        "lane_steps": counts["lane_steps"],
        "mismatches": counts["mismatches"],
        "saturated_outputs": counts["saturated_outputs"],
        "backend": backend,
        "seed": seed,
        "engines": per_engine,
        "mismatch_examples": mismatch_examples,
        "wall_s": round(wall, 2),
        "simulation_s": round(sim_s, 2),
        "golden_model_s": round(golden_s, 2),
        "machine": {**describe(), "python": platform.python_version()},
    }

