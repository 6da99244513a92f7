"""Re-export of :mod:`apsq.config` (the torch-free home of ``APSQConfig`` since issue 27): existing
``from apsq.nn.config import APSQConfig`` keeps working, and is the same class."""

from apsq.config import (  # noqa: F401
    ACC_BITS_MAX,
    GS_MAX,
    LAYER_FIELDS,
    LAYER_TYPES,
    PSUM_GRANULARITIES,
    RAE_BANKS,
    TILE_MAX,
    APSQConfig,
    LayerQuantConfig,
)

__all__ = ["APSQConfig", "LayerQuantConfig", "LAYER_TYPES", "LAYER_FIELDS", "PSUM_GRANULARITIES", "ACC_BITS_MAX",
           "TILE_MAX", "GS_MAX", "RAE_BANKS"]
