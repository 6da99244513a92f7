"""Output-stationary (OS) mapping of ``Y[M,N] = X[M,K]·W[N,K]ᵀ`` on an R x C array (the reference).

Each PE owns one output and accumulates its whole reduction in its INT32 register: rows map R output
rows (M), columns C output features (N). Loop order, outermost first::

    for m_t in range(ceil(M / R)):
        for n_t in range(ceil(N / C)):
            for k in range(K):                # the reduction runs inside the PEs
                acc[m_t, n_t] += X[m_t, k] · W[n_t, k]   # R inputs and C weights enter per cycle
            drain R x C outputs -> requantize -> output buffer

- no stored PSUMs at all, in every mode (APSQ changes nothing here);
- inputs: the R x K input block is re-streamed from the input buffer for every n_t (re-fetched from DRAM
  for the share of the block that does not fit);
- weights: W is re-streamed from the weight buffer for every m_t (re-fetched from DRAM for the share
  that does not fit);
- cycles per instance: ``ceil(M/R)·ceil(N/C)·(K + R + C - 2)``.
"""

from __future__ import annotations

import numpy as np

from apsq.hw.dataflow.common import DataflowTerms, GemmShapes, ceil_div, refetch_fraction

NAME = "os"


def terms(g: GemmShapes, acc) -> DataflowTerms:  # noqa: ANN001
    R, C = acc.pe_array.rows, acc.pe_array.cols
    n_m, n_n = ceil_div(g.m, R), ceil_div(g.n, C)
    mk, nk = g.m * g.k, g.n * g.k
    f_in = refetch_fraction(np.minimum(g.m, R) * g.k * g.act_bits, acc.buffers.input.capacity_bits)
    f_w = refetch_fraction(nk * g.w_bits, acc.buffers.weight.capacity_bits)
    macs = (g.m * g.k * g.n).astype(np.float64)
    zero = np.zeros(len(g.m), dtype=np.int64)
    return DataflowTerms(
        in_sram_reads=(mk * n_n).astype(np.float64),
        in_dram_reads=mk * (1 + (n_n - 1) * f_in),
        in_reg_writes=macs,  # forwarded across the columns
        w_sram_reads=(nk * n_m).astype(np.float64),
        w_dram_reads=nk * (1 + (n_m - 1) * f_w),
        w_reg_writes=macs,  # forwarded down the rows
        psum_live_outputs=zero,
        psum_lanes=zero,
        compute_cycles=(n_m * n_n * (g.k + R + C - 2)).astype(np.float64),
        stores_psums=False,
    )
