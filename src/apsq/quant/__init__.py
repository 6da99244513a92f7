"""Quantizers: pure STE math (:mod:`.ops`), power-of-two LSQ modules (:mod:`.lsq`), calibration search."""

from apsq.quant.lsq import LSQQuantizer
from apsq.quant.ops import fake_quantize, is_power_of_two, pow2_ste, qrange, quantize_codes, round_half_up, round_ste
from apsq.quant.search import best_pow2_exponent

__all__ = [
    "LSQQuantizer",
    "best_pow2_exponent",
    "fake_quantize",
    "is_power_of_two",
    "pow2_ste",
    "qrange",
    "quantize_codes",
    "round_half_up",
    "round_ste",
]
