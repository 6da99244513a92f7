"""Tiled loop nests of the three dataflows: the terms of one (loop order, tile count) per layer.

``Y[M,N] = X[M,K]·W[N,K]ᵀ`` on an R x C array. In IS and WS the array's rows reduce R elements of K per
step (the PSUM tile) and its columns hold C elements of the **stationary** dimension (N of W in WS, M
of X in IS); the other dimension (M in WS, N in IS) is **streamed** through the array. The reduction
loop ``k_t`` stays just outside the streaming loop (the running sums leave the array after every
step, the situation APSQ targets), so the live PSUM set is ``tile x min(C, stationary dim)``. Tiling
the streamed dimension into ``p`` tiles of ``T = ceil(S / p)`` shrinks that live set by ``p`` and costs
``p`` loads of every stationary tile instead of one. Loop nests, outermost first (WS; IS swaps X/W and
M/N)::

    "N>M>K":  for n_t: for m_o in p tiles: for k_t: load W[n_t, k_t]; for m in tile: PSUM[m, n_t] += ...
    "M>N>K":  for m_o in p tiles: for n_t: for k_t: load W[n_t, k_t]; for m in tile: ...

    "N>K>M":  for m_o in p tiles: for n_g in q groups of G stationary blocks: for k_t:
                  for n_t in n_g: load W[n_t, k_t]; for m in tile: PSUM[m, n_t] += ...

``p = 1`` with the first order is the untiled schedule of ``weight_stationary`` / ``input_stationary``.
In the first order the stationary operand's column block (``min(C, N)·K``) is reused across the ``p``
tiles and the streamed operand is re-read per stationary tile (footprint all of X); in the second the
streamed tile (``T·K``) is reused across the stationary tiles and the whole stationary operand is
re-read per tile (footprint all of W). Reuse that does not fit its buffer is re-fetched from DRAM by
:func:`~apsq.hw.dataflow.common.refetch_fraction`.

The third order (:data:`GROUPED_ORDER`, since 2026-12-08, after ZigZag's own mapping search found it:
``results/energy_zigzag/README.md``) is the second with the reduction moved outside a **group** of ``G``
stationary column blocks: the live PSUM set grows to ``T x G·C`` outputs, and in exchange the streamed
tile is read once per group (``q = ceil(n_s / G)`` times) instead of once per stationary block. With
``G = 1`` it is the second order, count for count. Narrow stored PSUMs are what make a large group fit
the PSUM buffer: this is where the capacity APSQ frees turns into reuse. ``groups`` gives ``q`` per layer
(the mapper takes the largest group whose live set fits).

OS (the whole reduction inside each PE, no stored PSUMs) has the two orders ``M>N>K`` (rows of X
outer: the R x K block of X is reused across N) and ``N>M>K`` (the C x K block of W reused across M).

A register that holds a stationary operand drives its multiplier for the whole streaming loop: it is
written once per load and read once per load (ZigZag counts the same); a streamed operand is written
and read once per MAC (it moves PE to PE). The rule is per role, not per operand: IS is WS with X and W
(and M and N) swapped, count for count (``tests/hw/test_dataflow_symmetry.py``); only the energies
differ, each operand's register and buffer its own (``PEArray.reg_pj``, ``Accelerator.buffers``).
"""

from __future__ import annotations

import numpy as np

from apsq.hw.dataflow.common import (
    DataflowTerms,
    GemmShapes,
    ceil_div,
    refetch_fraction,
)

__all__ = ["ORDERS", "UNTILED_ORDER", "GROUPED_ORDER", "stationary_terms", "os_terms", "stream_extent",
           "stationary_blocks", "live_width"]

ORDERS = {"ws": ("N>M>K", "M>N>K", "N>K>M"), "is": ("M>N>K", "N>M>K", "M>K>N"), "os": ("M>N>K", "N>M>K")}
"""Legal tile-level loop orders per dataflow (outermost first); the first is the untiled schedule's, the
third (IS / WS) groups the stationary tiles under the reduction loop (:data:`GROUPED_ORDER`)."""
GROUPED_ORDER = {"ws": "N>K>M", "is": "M>K>N"}
"""The order whose tile count is groups of the stationary dimension (see the module docstring)."""
UNTILED_ORDER = {df: orders[0] for df, orders in ORDERS.items()}


def stream_extent(g: GemmShapes, dataflow: str) -> np.ndarray:
    """Length of the streamed (tiled) dimension: M in WS, N in IS (OS tiles nothing)."""
    return g.m if dataflow == "ws" else g.n


def stationary_blocks(g: GemmShapes, acc, dataflow: str) -> np.ndarray:  # noqa: ANN001
    """``n_s``: column blocks of the stationary dimension (``ceil(N / cols)`` in WS, ``ceil(M / cols)`` in IS)."""
    return ceil_div(g.n if dataflow == "ws" else g.m, acc.pe_array.cols)


def live_width(g: GemmShapes, acc, dataflow: str, groups: np.ndarray | int | None = None) -> np.ndarray:  # noqa: ANN001
    """[L] stationary elements whose PSUMs are live together: ``min(G·C, dim)`` with ``G = ceil(n_s / q)``
    blocks per group for ``groups`` = ``q``; the default ``q = n_s`` gives the array's width ``min(C, dim)``."""
    n_s = stationary_blocks(g, acc, dataflow)
    q = n_s if groups is None else np.clip(np.broadcast_to(np.asarray(groups, dtype=np.int64), n_s.shape), 1, n_s)
    return np.minimum(ceil_div(n_s, q) * acc.pe_array.cols, g.n if dataflow == "ws" else g.m).astype(np.int64)


def stationary_terms(g: GemmShapes, acc, dataflow: str, tiles: np.ndarray | int = 1,  # noqa: ANN001
                     order: str | None = None, spill: str = "fractional",
                     groups: np.ndarray | int | None = None) -> DataflowTerms:
    """Terms of IS or WS with the streamed dimension cut into ``tiles`` tiles (arrays over layers).

    ``order``: one of ``ORDERS[dataflow]`` (default: the untiled order). ``groups``: under
    :data:`GROUPED_ORDER`, ``q`` groups of stationary column blocks per layer (default ``n_s``: one block
    each, the second order's counts); ignored by the other orders. Counts are elements per GEMM instance
    (``assemble`` multiplies by ``count``).
    """
    R, C = acc.pe_array.rows, acc.pe_array.cols
    order = order or UNTILED_ORDER[dataflow]
    s_bits: np.ndarray | int  # per-layer weight bits [L], or the activation bits
    t_bits: np.ndarray | int
    if dataflow == "ws":  # stationary W (N over the columns), streamed X (M)
        s_dim, t_dim, s_bits, t_bits = g.n, g.m, g.w_bits, g.act_bits
        s_cap, t_cap = acc.buffers.weight.capacity_bits, acc.buffers.input.capacity_bits
    else:  # IS: stationary X (M over the columns), streamed W (N)
        s_dim, t_dim, s_bits, t_bits = g.m, g.n, g.act_bits, g.w_bits
        s_cap, t_cap = acc.buffers.input.capacity_bits, acc.buffers.weight.capacity_bits
    p = np.minimum(np.broadcast_to(np.asarray(tiles, dtype=np.int64), g.m.shape), t_dim)
    tile = ceil_div(t_dim, p)
    n_k, n_s = ceil_div(g.k, R), ceil_div(s_dim, C)
    lanes = np.minimum(s_dim, C)
    s_el, t_el = s_dim * g.k, t_dim * g.k  # stationary / streamed operand, elements
    macs = (g.m * g.k * g.n).astype(np.float64)
    # stationary operand: every tile position loaded p times (SRAM -> PE register)
    s_loads = (s_el * p).astype(np.float64)
    if order == ORDERS[dataflow][0]:  # stationary tile outer: its column block is reused across the p tiles
        s_dram = s_el * (1 + (p - 1) * refetch_fraction(lanes * g.k * s_bits, s_cap, spill))
        t_dram = t_el * (1 + (n_s - 1) * refetch_fraction(t_el * t_bits, t_cap, spill))
    else:  # streamed tile outer: the T x K streamed tile is reused across the stationary tiles
        s_dram = s_el * (1 + (p - 1) * refetch_fraction(s_el * s_bits, s_cap, spill))
        t_dram = t_el * (1 + (n_s - 1) * refetch_fraction(tile * g.k * t_bits, t_cap, spill))
    live_cols = lanes
    if order == GROUPED_ORDER[dataflow]:  # G blocks share each reduction step: the T x K tile is read
        q = n_s if groups is None else np.broadcast_to(np.asarray(groups, dtype=np.int64), g.m.shape)
        per_group = ceil_div(n_s, np.clip(q, 1, n_s))  # once per group (q' = ceil(n_s / G) groups), its
        q = ceil_div(n_s, per_group)  # T x R slice of one step once per block of the group
        t_dram = t_el * (1 + (q - 1) * refetch_fraction(tile * g.k * t_bits, t_cap, spill)) \
            + t_el * q * (per_group - 1) * refetch_fraction(tile * np.minimum(g.k, R) * t_bits, t_cap, spill)
        live_cols = live_width(g, acc, dataflow, q)
    t_sram = (t_el * n_s).astype(np.float64)  # the streamed operand passes once per stationary tile
    cycles = (n_s * n_k * (t_dim + p * (R + C - 2))).astype(np.float64)
    # per-channel PSUM exponents (one per tile step and output channel): WS loads the C exponents of a
    # weight tile with it (p times per position); IS needs each streamed channel's per stationary tile
    exp_reads = (n_k * g.n * (p if dataflow == "ws" else n_s)).astype(np.float64)
    common = dict(psum_live_outputs=tile * live_cols, psum_lanes=lanes, compute_cycles=cycles,
                  exponent_reads=exp_reads)
    # The two roles are charged alike whichever operand plays them (IS = WS with X and W swapped):
    # the stationary operand is loaded into the PE registers (one SRAM read, one register write and one
    # register read per load); the streamed operand passes once per stationary tile and moves PE to PE
    # (one register write and one read per MAC). Each at its own operand's register energy
    # (PEArray.reg_pj): a machine that broadcasts its streamed operand without a register gives that
    # operand's register 0 pJ/bit (ZigZag's tpu_like: inputs; its IS twin: weights).
    stationary = dict(sram_reads=s_loads, dram_reads=s_dram, reg_writes=s_loads, reg_reads=s_loads)
    streamed = dict(sram_reads=t_sram, dram_reads=t_dram, reg_writes=macs, reg_reads=macs)
    x, w = (streamed, stationary) if dataflow == "ws" else (stationary, streamed)
    return DataflowTerms(
        in_sram_reads=x["sram_reads"], in_dram_reads=x["dram_reads"], in_reg_writes=x["reg_writes"],
        in_reg_reads=x["reg_reads"], w_sram_reads=w["sram_reads"], w_dram_reads=w["dram_reads"],
        w_reg_writes=w["reg_writes"], w_reg_reads=w["reg_reads"], **common,
    )


def os_terms(g: GemmShapes, acc, order: str | None = None, spill: str = "fractional") -> DataflowTerms:  # noqa: ANN001
    """Output stationary: rows map R rows of M, columns C of N, the reduction runs inside each PE."""
    R, C = acc.pe_array.rows, acc.pe_array.cols
    order = order or UNTILED_ORDER["os"]
    n_m, n_n = ceil_div(g.m, R), ceil_div(g.n, C)
    mk, nk = g.m * g.k, g.n * g.k
    in_cap, w_cap = acc.buffers.input.capacity_bits, acc.buffers.weight.capacity_bits
    if order == "M>N>K":  # the R x K block of X is reused across the N tiles; W re-read per M tile
        in_dram = mk * (1 + (n_n - 1) * refetch_fraction(np.minimum(g.m, R) * g.k * g.act_bits, in_cap, spill))
        w_dram = nk * (1 + (n_m - 1) * refetch_fraction(nk * g.w_bits, w_cap, spill))
    else:  # the C x K block of W is reused across the M tiles; X re-read per N tile
        in_dram = mk * (1 + (n_n - 1) * refetch_fraction(mk * g.act_bits, in_cap, spill))
        w_dram = nk * (1 + (n_m - 1) * refetch_fraction(np.minimum(g.n, C) * g.k * g.w_bits, w_cap, spill))
    macs = (g.m * g.k * g.n).astype(np.float64)
    zero = np.zeros(len(g.m), dtype=np.int64)
    return DataflowTerms(
        in_sram_reads=(mk * n_n).astype(np.float64),
        in_dram_reads=in_dram,
        in_reg_writes=macs,  # forwarded across the columns
        w_sram_reads=(nk * n_m).astype(np.float64),
        w_dram_reads=w_dram,
        w_reg_writes=macs,  # forwarded down the rows
        psum_live_outputs=zero,
        psum_lanes=zero,
        compute_cycles=(n_m * n_n * (g.k + R + C - 2)).astype(np.float64),
        stores_psums=False,
    )
