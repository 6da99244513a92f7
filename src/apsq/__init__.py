"""apsq: partial-sum (PSUM) aware quantization and accelerator co-design (APSQ, DAC 2025).

The public names are loaded on first use (PEP 562), so that ``apsq --help`` and the commands that
need no model do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from apsq.errors import APSQError, NonFiniteInputError

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

_LAZY = {name: "apsq.nn" for name in
         ("APSQConfig", "calibrate", "print_layer_stats", "quant_layers", "quantize_", "track_stats")}

if TYPE_CHECKING:  # pragma: no cover
    from apsq.nn import APSQConfig, calibrate, print_layer_stats, quant_layers, quantize_, track_stats


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'apsq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
