"""Quantized layers and the model transform."""

from apsq.nn.calibration import calibrate
from apsq.nn.config import APSQConfig, LayerQuantConfig
from apsq.nn.layers import QuantConv1d, QuantConv2d, QuantLinear, QuantMatmul, QuantTransposedLinear
from apsq.nn.psum_quantizer import PSUMQuantizer
from apsq.nn.stats import LayerStats
from apsq.nn.transform import (
    QuantizeReport,
    SkippedLayer,
    print_layer_stats,
    quant_layers,
    quantize_,
    track_stats,
)

__all__ = [
    "APSQConfig",
    "LayerQuantConfig",
    "LayerStats",
    "PSUMQuantizer",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLinear",
    "QuantMatmul",
    "QuantTransposedLinear",
    "QuantizeReport",
    "SkippedLayer",
    "calibrate",
    "print_layer_stats",
    "quant_layers",
    "quantize_",
    "track_stats",
]
