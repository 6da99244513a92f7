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

from apsq.hw.dataflow.common import DataflowTerms, GemmShapes
from apsq.hw.dataflow.tiling import os_terms

NAME = "os"


def terms(g: GemmShapes, acc, spill: str = "fractional") -> DataflowTerms:  # noqa: ANN001
    """The untiled loop order above (``tiling.os_terms`` with order ``M>N>K``)."""
    return os_terms(g, acc, "M>N>K", spill)
