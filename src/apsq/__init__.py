"""apsq: partial-sum (PSUM) aware quantization and accelerator co-design (APSQ, DAC 2025)."""

from apsq.errors import APSQError, NonFiniteInputError
from apsq.nn import APSQConfig, calibrate, print_layer_stats, quant_layers, quantize_, track_stats

__version__ = "0.1.0"

__all__ = [
    "APSQConfig",
    "APSQError",
    "NonFiniteInputError",
    "calibrate",
    "print_layer_stats",
    "quant_layers",
    "quantize_",
    "track_stats",
]
