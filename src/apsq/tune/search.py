"""Choosing gs per layer: a statistics predictor and a measured sensitivity search.

Both walk from an accurate starting point towards lower energy, one layer move at a time, and
return the path of visited choices (each a point of an accuracy-energy trade-off):

- **predictor** (cheap: no evaluation needed to decide): layer ``l`` at gs ``g`` is scored by its
  calibration output error ``e_lg`` (relative, :attr:`apsq.nn.stats.LayerStats.rel_error`);
  independent errors add in power, so a choice's predicted degradation is ``D = Σ_l e_lg²``. Start at
  each layer's lowest-error gs; then repeatedly take the move with the smallest ``ΔD / (−ΔE)``
  (a move that lowers both comes first).
- **measured**: start at the uniform gs with the best measured accuracy (ties: lower KL); measure
  each layer's move alone to its lowest-energy gs (``ΔKL`` of the task output vs full precision);
  then apply the moves in order of ``ΔKL / (−ΔE)``, measuring after each. ``2L`` evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apsq.errors import APSQError
from apsq.eval.metrics import Metrics
from apsq.nn.config import APSQConfig
from apsq.tune.energy_table import EnergyTable
from apsq.tune.profile import GsProfile


@dataclass(frozen=True)
class SearchPoint:
    """One per-layer choice with its energy (pJ), predicted degradation and measured metrics."""

    method: str
    choice: dict[str, int]
    energy_pj: float
    predicted: float | None = None
    metrics: Metrics | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "energy_uj": self.energy_pj / 1e6,
            "predicted_degradation": self.predicted,
            **(self.metrics.to_dict() if self.metrics else {}),
            "gs": dict(self.choice),
        }


def predicted_degradation(stats: Mapping[int, Mapping[str, Mapping[str, float]]], choice: Mapping[str, int]) -> float:
    """``Σ_l rel_error(l, choice[l])²`` from the calibration statistics."""
    return float(sum(stats[g][n]["rel_error"] ** 2 for n, g in choice.items()))


def predictor_search(profile: GsProfile, table: EnergyTable) -> list[SearchPoint]:
    """Greedy predictor path (no evaluations): lowest predicted error first, then cheapest moves."""
    st = profile.stats
    choice = {n: min(profile.gs_values, key=lambda g: (st[g][n]["rel_error"], table.pj[n][g])) for n in profile.layers}
    path = [SearchPoint("predictor", dict(choice), table.total_pj(choice), predicted_degradation(st, choice))]
    while True:
        best: tuple[float, str, int] | None = None
        for n in profile.layers:
            e0, d0 = table.pj[n][choice[n]], st[choice[n]][n]["rel_error"] ** 2
            for g in profile.gs_values:
                saving = e0 - table.pj[n][g]
                if saving <= 1e-9 * max(e0, 1.0):
                    continue
                ratio = (st[g][n]["rel_error"] ** 2 - d0) / saving
                if best is None or ratio < best[0]:
                    best = (ratio, n, g)
        if best is None:
            return path
        choice[best[1]] = best[2]
        path.append(SearchPoint("predictor", dict(choice), table.total_pj(choice), predicted_degradation(st, choice)))


def measured_search(profile: GsProfile, table: EnergyTable,
                    progress: Callable[[str], None] | None = None) -> list[SearchPoint]:
    """Measured sensitivity path (``2L`` evaluations; see the module docstring)."""
    start_g = max(profile.gs_values, key=lambda g: (profile.uniform[g].accuracy, -profile.uniform[g].kl))
    choice = {n: start_g for n in profile.layers}
    base_m = profile.uniform[start_g]
    path = [SearchPoint("measured", dict(choice), table.total_pj(choice),
                        predicted_degradation(profile.stats, choice), base_m)]
    moves: list[tuple[float, str, int]] = []
    for i, n in enumerate(profile.layers):
        cheapest = min(profile.gs_values, key=lambda g: (table.pj[n][g], -g))
        saving = table.pj[n][start_g] - table.pj[n][cheapest]
        if saving <= 1e-9 * max(table.pj[n][start_g], 1.0):
            continue
        if progress:
            progress(f"sensitivity {i + 1}/{len(profile.layers)}: {n}")
        m = profile.measure({**choice, n: cheapest})
        moves.append(((m.kl - base_m.kl) / saving, n, cheapest))
    for j, (_, n, g) in enumerate(sorted(moves)):
        if progress:
            progress(f"apply {j + 1}/{len(moves)}: {n} -> gs={g}")
        choice[n] = g
        path.append(SearchPoint("measured", dict(choice), table.total_pj(choice),
                                predicted_degradation(profile.stats, choice), profile.measure(choice)))
    return path


def measure_points(profile: GsProfile, points: Sequence[SearchPoint], max_points: int | None = None,
                   progress: Callable[[str], None] | None = None) -> list[SearchPoint]:
    """Measure ``points`` (at most ``max_points`` of them, evenly spaced, first and last included)."""
    idx = list(range(len(points)))
    if max_points is not None and len(points) > max_points >= 2:
        idx = sorted({round(i * (len(points) - 1) / (max_points - 1)) for i in range(max_points)})
    out = []
    for j, i in enumerate(idx):
        p = points[i]
        if progress:
            progress(f"measure {p.method} point {j + 1}/{len(idx)}")
        out.append(SearchPoint(p.method, p.choice, p.energy_pj, p.predicted, profile.measure(p.choice)))
    return out


def uniform_points(profile: GsProfile, table: EnergyTable) -> list[SearchPoint]:
    return [SearchPoint(f"uniform gs={g}", {n: g for n in profile.layers},
                        table.total_pj({n: g for n in profile.layers}),
                        predicted_degradation(profile.stats, {n: g for n in profile.layers}), profile.uniform[g])
            for g in profile.gs_values]


def pareto_front(points: Sequence[SearchPoint]) -> list[SearchPoint]:
    """Measured points not dominated in (lower energy, higher accuracy, then lower KL), by energy."""
    pts = [(p, p.metrics) for p in points if p.metrics is not None]
    front = []
    for p, pm in pts:
        dominated = any(
            q is not p and q.energy_pj <= p.energy_pj and qm.accuracy >= pm.accuracy
            and (q.energy_pj < p.energy_pj or qm.accuracy > pm.accuracy or qm.kl < pm.kl)
            for q, qm in pts)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p.energy_pj)


def choose(points: Sequence[SearchPoint], budget_pj: float) -> SearchPoint:
    """The most accurate measured point within ``budget_pj`` (ties: lower KL, then lower energy)."""
    ok = [(p, p.metrics) for p in points if p.metrics is not None and p.energy_pj <= budget_pj * (1 + 1e-12)]
    if not ok:
        lo = min(p.energy_pj for p in points) / 1e6
        raise APSQError(f"energy budget {budget_pj / 1e6:.3f} µJ is below every candidate (lowest {lo:.3f} µJ); "
                        "raise --budget-uj / --budget-frac")
    return max(ok, key=lambda pm: (pm[1].accuracy, -pm[1].kl, -pm[0].energy_pj))[0]


def choice_config(base: APSQConfig, choice: Mapping[str, int]) -> APSQConfig:
    """``base`` with one override ``{layer: {gs: g}}`` per layer (exact module names)."""
    over = dict(base.overrides)
    for n, g in choice.items():
        if any(c in n for c in "*?["):
            raise APSQError(f"layer name {n!r} contains a wildcard character; cannot write an exact override")
        over[n] = {**over.get(n, {}), "gs": int(g)}
    return base.replace(overrides=over)
