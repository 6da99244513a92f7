"""Input-stationary (IS) mapping of ``Y[M,N] = X[M,K]·W[N,K]ᵀ`` on an R x C array.

PE rows reduce K (R elements per step = the PSUM tile), columns hold C input rows (tokens / pixels).
Loop order, outermost first::

    for m_t in range(ceil(M / C)):            # input-row tile
        for k_t in range(ceil(K / R)):        # reduction tile (PSUM step)  <- outside the stationary loop
            load X[m_t, k_t] into the PEs     # R x C inputs, stationary
            for n in range(N):                # stream every weight row through the array
                PSUM[m_t, n] += X[m_t, k_t] · W[n, k_t]   # C partial sums leave the array

- inputs: read once from DRAM and once from the input buffer into the PEs (stationary: one register
  write and one read per load);
- weights: W is re-streamed from the weight buffer for every m_t; re-fetched from DRAM for the share of
  W that does not fit in the weight buffer;
- PSUMs: the running sums of ``min(C, M) x N`` outputs are live between k_t steps;
- cycles per instance: ``ceil(M/C)·ceil(K/R)·(N + R + C - 2)``.
"""

from __future__ import annotations

from apsq.hw.dataflow.common import DataflowTerms, GemmShapes
from apsq.hw.dataflow.tiling import stationary_terms

NAME = "is"


def terms(g: GemmShapes, acc, spill: str = "fractional") -> DataflowTerms:  # noqa: ANN001
    """The untiled loop order above (``tiling.stationary_terms`` with one tile)."""
    return stationary_terms(g, acc, NAME, 1, None, spill)
