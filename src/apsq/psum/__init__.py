"""Tiling along the reduction dimension and the PSUM accumulation modes."""

from apsq.psum.accumulate import closing_steps, psum_accumulate
from apsq.psum.fused import conv2d_psum, linear_psum, psum_accumulate_fused
from apsq.psum.tiling import conv2d_partials, linear_partials, num_tiles

__all__ = [
    "closing_steps",
    "conv2d_partials",
    "conv2d_psum",
    "linear_partials",
    "linear_psum",
    "num_tiles",
    "psum_accumulate",
    "psum_accumulate_fused",
]
