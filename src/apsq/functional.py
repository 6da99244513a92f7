"""Functional API (``apsq.functional``): the stable entry points other parts rely on."""

from apsq.psum.accumulate import psum_accumulate
from apsq.psum.tiling import conv2d_partials, linear_partials, num_tiles
from apsq.quant.ops import fake_quantize, pow2_ste, quantize_codes, round_half_up, round_ste

__all__ = [
    "conv2d_partials",
    "fake_quantize",
    "linear_partials",
    "num_tiles",
    "pow2_ste",
    "psum_accumulate",
    "quantize_codes",
    "round_half_up",
    "round_ste",
]
