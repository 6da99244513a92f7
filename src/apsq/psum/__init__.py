"""Tiling along the reduction dimension and the PSUM accumulation modes."""

from apsq.psum.accumulate import closing_steps, psum_accumulate
from apsq.psum.tiling import conv2d_partials, linear_partials, num_tiles

__all__ = ["closing_steps", "conv2d_partials", "linear_partials", "num_tiles", "psum_accumulate"]
