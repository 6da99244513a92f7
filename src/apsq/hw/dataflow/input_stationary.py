"""Input-stationary (IS) mapping of ``Y[M,N] = X[M,K]·W[N,K]ᵀ`` on an R x C array.

PE rows reduce K (R elements per step = the PSUM tile), columns hold C input rows (tokens / pixels).
Loop order, outermost first::

    for m_t in range(ceil(M / C)):            # input-row tile
        for k_t in range(ceil(K / R)):        # reduction tile (PSUM step)  <- outside the stationary loop
            load X[m_t, k_t] into the PEs     # R x C inputs, stationary
            for n in range(N):                # stream every weight row through the array
                PSUM[m_t, n] += X[m_t, k_t] · W[n, k_t]   # C partial sums leave the array

- inputs: read once from DRAM and once from the input buffer into the PEs;
- weights: W is re-streamed from the weight buffer for every m_t; re-fetched from DRAM for the share of
  W that does not fit in the weight buffer;
- PSUMs: the running sums of ``min(C, M) x N`` outputs are live between k_t steps;
- cycles per instance: ``ceil(M/C)·ceil(K/R)·(N + R + C - 2)``.
"""

from __future__ import annotations

import numpy as np

from apsq.hw.dataflow.common import DataflowTerms, GemmShapes, ceil_div, refetch_fraction

NAME = "is"


def terms(g: GemmShapes, acc) -> DataflowTerms:  # noqa: ANN001
    R, C = acc.pe_array.rows, acc.pe_array.cols
    n_k, n_m = ceil_div(g.k, R), ceil_div(g.m, C)
    mk, nk = g.m * g.k, g.n * g.k
    f_w = refetch_fraction(nk * g.w_bits, acc.buffers.weight.capacity_bits)
    lanes = np.minimum(g.m, C)
    return DataflowTerms(
        in_sram_reads=mk.astype(np.float64),
        in_dram_reads=mk.astype(np.float64),
        in_reg_writes=mk.astype(np.float64),
        w_sram_reads=(nk * n_m).astype(np.float64),
        w_dram_reads=nk * (1 + (n_m - 1) * f_w),
        w_reg_writes=(g.m * g.k * g.n).astype(np.float64),  # forwarded across the columns
        psum_live_outputs=lanes * g.n,
        psum_lanes=lanes,
        compute_cycles=(n_m * n_k * (g.n + R + C - 2)).astype(np.float64),
    )
