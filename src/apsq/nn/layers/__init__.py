"""Quantized layers that model tiled PSUM accumulation.

``QuantLinear`` (``nn.Linear``), ``QuantTransposedLinear`` (Hugging Face's GPT-2 ``Conv1D``, a
Linear whose weight is stored ``[in, out]``), ``QuantConv1d`` / ``QuantConv2d`` (every padding mode
and form torch accepts) and ``QuantMatmul`` (attention's activation x activation products).

Each layer fake-quantizes its operands (power-of-two LSQ, W8A8 by default), splits the reduction
dimension K into ``tile``-sized steps (:mod:`apsq.psum.tiling`) and accumulates the tile partial
sums with its :class:`~apsq.nn.psum_quantizer.PSUMQuantizer`, in every PSUM mode. The bias is added
after the reduction (in full precision, like the output rescale of an accelerator's post-processing unit).

One template runs every kind (:mod:`apsq.nn.layers.base`: forward, accumulation, step
initialisation, calibration, statistics, the settings record of :mod:`apsq.nn.layers.settings`); the
kinds (:mod:`~apsq.nn.layers.linear`, :mod:`~apsq.nn.layers.conv`, :mod:`~apsq.nn.layers.matmul`)
supply only how their operands are quantized, shaped and handed to the accumulation.
"""

from typing import TypeAlias

from apsq.nn.layers.base import DEFAULT_CALIB_ROWS, QuantLayerBase, WeightedQuantLayer
from apsq.nn.layers.conv import QuantConv1d, QuantConv2d
from apsq.nn.layers.linear import QuantLinear, QuantTransposedLinear
from apsq.nn.layers.matmul import QuantMatmul, per_channel_matmul_error
from apsq.nn.layers.settings import (
    SETTINGS_FORMAT,
    decode_settings,
    encode_settings,
    settings_mismatch,
    settings_record,
)

QUANT_LAYER_TYPES = (QuantLinear, QuantConv1d, QuantConv2d, QuantMatmul)
QuantLayer: TypeAlias = QuantLinear | QuantConv1d | QuantConv2d | QuantMatmul  # one of QUANT_LAYER_TYPES

__all__ = [
    "DEFAULT_CALIB_ROWS",
    "QUANT_LAYER_TYPES",
    "SETTINGS_FORMAT",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLayer",
    "QuantLayerBase",
    "QuantLinear",
    "QuantMatmul",
    "QuantTransposedLinear",
    "WeightedQuantLayer",
    "decode_settings",
    "encode_settings",
    "per_channel_matmul_error",
    "settings_mismatch",
    "settings_record",
]
