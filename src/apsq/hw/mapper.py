"""The mapper: per layer and dataflow, the loop order and tiling that minimise energy.

For IS and WS the search space is every legal tile-level loop order of the dataflow
(:data:`~apsq.hw.dataflow.tiling.ORDERS`: stationary tile outer, streamed tile outer, or groups of
stationary tiles under the reduction) times a tile count ``p`` of the streamed dimension (M in WS, N in
IS): all powers of two up to the dimension, plus the smallest ``p`` whose live PSUM set fits the PSUM
buffer; under the third order each ``p`` takes the largest group of stationary blocks that fits
(:func:`_groups`). For OS: its two loop orders. Every candidate is costed by the full energy model (:func:`apsq.hw.cost.layer_energy`:
memory traffic, MACs, RAE logic, exponents) and the cheapest is kept per layer — an exhaustive search of
a small space (about 3 x 16 candidates per layer, evaluated as one vectorised batch). Ties go to the
untiled schedule, then to fewer tiles.

The third order exists since 2026-12-08: ZigZag's own mapping search found BERT-Base schedules on
``apsq-28nm-int8`` in which INT8 PSUMs let a large output tile stay in the PSUM buffer while the
reduction is split, so the weights leave DRAM once; the first two orders keep the live PSUM set at the
array's width and cannot use the capacity narrow PSUMs free (``results/energy_zigzag/README.md``).

``schedule="untiled"`` is the first order with ``p = 1`` for every layer (the fixed loop orders of
``weight_stationary`` / ``input_stationary`` / ``output_stationary``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from apsq.errors import check_choice
from apsq.hw.cost import layer_energy
from apsq.hw.dataflow.common import (
    AccessCounts,
    GemmShapes,
    PsumPlan,
    assemble,
    ceil_div,
)
from apsq.hw.dataflow.tiling import (
    GROUPED_ORDER,
    ORDERS,
    UNTILED_ORDER,
    live_width,
    os_terms,
    stationary_blocks,
    stationary_terms,
    stream_extent,
)

__all__ = ["SCHEDULES", "Schedule", "map_layers"]

SCHEDULES = ("untiled", "tiled")


@dataclass(frozen=True)
class Schedule:
    """The chosen mapping per layer: loop order (outermost first), tiles of the streamed dimension."""

    dataflow: str
    kind: str  # "untiled" | "tiled"
    order: tuple[str, ...]
    tiles: np.ndarray  # [L] tiles of the streamed dimension (1 = untiled; OS: 1)
    tile: np.ndarray  # [L] streamed elements per tile
    group: np.ndarray  # [L] stationary elements whose PSUMs are live together (the array's width, or
    #                    G·C under GROUPED_ORDER; OS: 1)

    def per_layer(self, i: int) -> dict[str, Any]:
        return {"order": self.order[i], "tiles": int(self.tiles[i]), "tile": int(self.tile[i]),
                "group": int(self.group[i])}


def _rep(plan: PsumPlan, t: int) -> PsumPlan:
    bits = plan.bits if np.ndim(plan.bits) == 0 else np.tile(plan.bits, t)
    return PsumPlan(plan.mode, np.tile(plan.steps, t), np.tile(plan.reads, t), np.tile(plan.writes, t),
                    np.tile(plan.slots, t), bits)


def _rep_shapes(g: GemmShapes, t: int) -> GemmShapes:
    return GemmShapes(np.tile(g.m, t), np.tile(g.k, t), np.tile(g.n, t), np.tile(g.count, t),
                      np.tile(g.w_bits, t), g.act_bits)


def _candidates(g: GemmShapes, acc, dataflow: str, plan: PsumPlan) -> np.ndarray:  # noqa: ANN001
    """[T, L] tile counts: 1, 2, 4, ... up to the streamed dimension, and the smallest that fits."""
    S = stream_extent(g, dataflow)
    top = int(np.ceil(np.log2(max(int(S.max()), 1)))) + 1
    pow2 = np.minimum(2 ** np.arange(top)[:, None], S[None, :])
    lanes = np.minimum(g.n if dataflow == "ws" else g.m, acc.pe_array.cols)
    per_el = lanes * np.maximum(plan.slots, 1) * np.asarray(plan.bits)  # live bits per streamed element
    cap = acc.buffers.psum.capacity_bits
    fit_tile = np.maximum(1, np.floor(cap / np.maximum(per_el, 1))).astype(np.int64)
    fit = np.minimum(ceil_div(S, fit_tile), S)
    return np.vstack([pow2, fit[None, :]]).astype(np.int64)


def _groups(g: GemmShapes, acc, dataflow: str, plan: PsumPlan, tiles: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Under :data:`~apsq.hw.dataflow.tiling.GROUPED_ORDER`, ``q`` per candidate: the fewest groups (the
    largest group of stationary blocks) whose live PSUM set ``T x G·C`` fits the PSUM buffer; at least one
    block per group. Larger groups only save streamed-operand reads, so the largest that fits is best."""
    n_s = stationary_blocks(g, acc, dataflow)
    tile = ceil_div(stream_extent(g, dataflow), tiles)
    per_block = tile * acc.pe_array.cols * np.maximum(plan.slots, 1) * np.asarray(plan.bits)
    fit = np.maximum(1, np.floor(acc.buffers.psum.capacity_bits / np.maximum(per_block, 1)))
    return ceil_div(n_s, np.minimum(fit, n_s)).astype(np.int64)


def map_layers(g: GemmShapes, acc, dataflow: str, plan: PsumPlan, names: list[str], label: str,  # noqa: ANN001
               schedule: str = "untiled", spill: str = "fractional", mode: str = "none",
               psum_granularity: str | np.ndarray = "tensor",
               full_precision: np.ndarray | None = None) -> tuple[AccessCounts, Schedule]:
    """Access counts of the chosen schedule per layer, and the schedule itself.

    ``schedule``: ``untiled`` (fixed orders) or ``tiled`` (the search above). ``spill``: see
    :data:`~apsq.hw.dataflow.common.SPILL_RULES`. ``full_precision``: bool per layer (no RAE cost).
    """
    check_choice("schedule", schedule, SCHEDULES)
    L = len(g.m)
    if schedule == "untiled":
        if dataflow == "os":
            t = os_terms(g, acc, UNTILED_ORDER["os"], spill)
        else:
            t = stationary_terms(g, acc, dataflow, 1, None, spill)
        counts = assemble(label, g, t, plan, acc, names, spill)
        ones = np.ones(L, dtype=np.int64)
        tile = ones if dataflow == "os" else stream_extent(g, dataflow).astype(np.int64)
        group = ones if dataflow == "os" else live_width(g, acc, dataflow)
        return counts, Schedule(dataflow, schedule, (UNTILED_ORDER[dataflow],) * L, ones, tile, group)
    orders = ORDERS[dataflow]
    if dataflow == "os":
        P = np.ones((1, L), dtype=np.int64)
    else:
        P = _candidates(g, acc, dataflow, plan)
    T = P.shape[0]
    n_rows = T * len(orders)
    G = _rep_shapes(g, n_rows)
    parts = []
    gT = _rep_shapes(g, T)
    groups = None if dataflow == "os" else _groups(gT, acc, dataflow, _rep(plan, T), P.reshape(-1))
    for order in orders:
        if dataflow == "os":
            parts.append(os_terms(gT, acc, order, spill))
        else:
            parts.append(stationary_terms(gT, acc, dataflow, P.reshape(-1), order, spill, groups))
    t = _concat_terms(parts)
    counts = assemble(label, G, t, _rep(plan, n_rows), acc, list(names) * n_rows, spill)
    gran = psum_granularity if isinstance(psum_granularity, str) else np.tile(psum_granularity, n_rows)
    fp = None if full_precision is None else np.tile(np.asarray(full_precision, dtype=bool), n_rows)
    e = layer_energy(counts, acc, mode, G, gran, fp).total.reshape(n_rows, L)
    # prefer the untiled candidate (row 0), then fewer tiles, when energies tie (relative 1e-12)
    best = np.argmin(e * (1 + 1e-12 * np.arange(n_rows)[:, None]), axis=0)
    idx = best * L + np.arange(L)
    chosen = counts.take(idx)
    tiles = np.tile(P, (len(orders), 1)).reshape(-1)[idx]
    layer_orders = tuple(orders[int(b) // T] for b in best)
    if dataflow == "os":
        ones = np.ones(L, dtype=np.int64)
        return chosen, Schedule(dataflow, schedule, layer_orders, tiles, ones, ones)
    assert groups is not None  # IS / WS
    grouped = np.array([o == GROUPED_ORDER[dataflow] for o in layer_orders])
    q = np.where(grouped, groups.reshape(T, L)[best % T, np.arange(L)], stationary_blocks(g, acc, dataflow))
    group = live_width(g, acc, dataflow, q)
    tile = ceil_div(stream_extent(g, dataflow), tiles).astype(np.int64)
    return chosen, Schedule(dataflow, schedule, layer_orders, tiles, tile, group)


def _concat_terms(parts: list) -> Any:
    """Concatenate DataflowTerms along layers (candidate rows)."""
    first = parts[0]
    kw = {}
    for f in first.__dataclass_fields__:
        vals = [getattr(p, f) for p in parts]
        if f == "stores_psums":
            kw[f] = vals[0]
        elif vals[0] is None:
            kw[f] = None
        else:
            kw[f] = np.concatenate([np.asarray(v) for v in vals])
    return replace(first, **kw)
