"""Quantized layers and the model transform."""

from apsq.nn.config import APSQConfig, LayerQuantConfig
from apsq.nn.layers import QuantConv2d, QuantLinear, QuantMatmul
from apsq.nn.psum_quantizer import PSUMQuantizer
from apsq.nn.stats import LayerStats
from apsq.nn.transform import calibrate, print_layer_stats, quant_layers, quantize_, track_stats

__all__ = [
    "APSQConfig",
    "LayerQuantConfig",
    "LayerStats",
    "PSUMQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "QuantMatmul",
    "calibrate",
    "print_layer_stats",
    "quant_layers",
    "quantize_",
    "track_stats",
]
