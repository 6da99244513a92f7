"""Weight-stationary (WS) mapping of ``Y[M,N] = X[M,K]·W[N,K]ᵀ`` on an R x C array (TPU-like).

PE rows reduce K (R elements per step = the PSUM tile), columns hold C output features. Loop order,
outermost first::

    for n_t in range(ceil(N / C)):            # output-feature tile
        for k_t in range(ceil(K / R)):        # reduction tile (PSUM step)  <- outside the stationary loop
            load W[n_t, k_t] into the PEs     # R x C weights, stationary
            for m in range(M):                # stream every input row through the array
                PSUM[m, n_t] += X[m, k_t] · W[n_t, k_t]   # C partial sums leave the array

- weights: read once from DRAM and once from the weight buffer into the PEs;
- inputs: X is re-streamed from the input buffer for every n_t; re-fetched from DRAM for the share of X
  that does not fit in the input buffer (see ``refetch_fraction``);
- PSUMs: the running sums of ``M x min(C, N)`` outputs are live between k_t steps;
- cycles per instance: ``ceil(N/C)·ceil(K/R)·(M + R + C - 2)`` (systolic fill and drain per tile;
  weight loads double-buffered).
"""

from __future__ import annotations

import numpy as np

from apsq.hw.dataflow.common import DataflowTerms, GemmShapes, ceil_div, refetch_fraction

NAME = "ws"


def terms(g: GemmShapes, acc) -> DataflowTerms:  # noqa: ANN001
    R, C = acc.pe_array.rows, acc.pe_array.cols
    n_k, n_n = ceil_div(g.k, R), ceil_div(g.n, C)
    mk, nk = g.m * g.k, g.n * g.k
    f_in = refetch_fraction(mk * g.act_bits, acc.buffers.input.capacity_bits)
    lanes = np.minimum(g.n, C)
    return DataflowTerms(
        in_sram_reads=(mk * n_n).astype(np.float64),
        in_dram_reads=mk * (1 + (n_n - 1) * f_in),
        in_reg_writes=(g.m * g.k * g.n).astype(np.float64),  # forwarded across the columns
        w_sram_reads=nk.astype(np.float64),
        w_dram_reads=nk.astype(np.float64),
        w_reg_writes=nk.astype(np.float64),
        psum_live_outputs=g.m * lanes,
        psum_lanes=lanes,
        compute_cycles=(n_n * n_k * (g.m + R + C - 2)).astype(np.float64),
    )
