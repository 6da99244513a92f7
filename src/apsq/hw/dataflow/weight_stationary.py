"""Weight-stationary (WS) mapping of ``Y[M,N] = X[M,K]·W[N,K]ᵀ`` on an R x C array (TPU-like).

PE rows reduce K (R elements per step = the PSUM tile), columns hold C output features. Loop order,
outermost first::

    for n_t in range(ceil(N / C)):            # output-feature tile
        for k_t in range(ceil(K / R)):        # reduction tile (PSUM step)  <- outside the stationary loop
            load W[n_t, k_t] into the PEs     # R x C weights, stationary
            for m in range(M):                # stream every input row through the array
                PSUM[m, n_t] += X[m, k_t] · W[n_t, k_t]   # C partial sums leave the array

- weights: read once from DRAM and once from the weight buffer into the PEs (stationary: one register
  write and one read per load);
- inputs: X is re-streamed from the input buffer for every n_t; re-fetched from DRAM for the share of X
  that does not fit in the input buffer (see ``refetch_fraction``);
- PSUMs: the running sums of ``M x min(C, N)`` outputs are live between k_t steps;
- cycles per instance: ``ceil(N/C)·ceil(K/R)·(M + R + C - 2)`` (systolic fill and drain per tile;
  weight loads double-buffered).
"""

from __future__ import annotations

from apsq.hw.dataflow.common import DataflowTerms, GemmShapes
from apsq.hw.dataflow.tiling import stationary_terms

NAME = "ws"


def terms(g: GemmShapes, acc, spill: str = "fractional") -> DataflowTerms:  # noqa: ANN001
    """The untiled loop order above (``tiling.stationary_terms`` with one tile)."""
    return stationary_terms(g, acc, NAME, 1, None, spill)
