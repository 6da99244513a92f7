"""Per-layer APSQ group-size selection under a PSUM-buffer / energy budget (``apsq tune-gs``).

:mod:`apsq.tune.profile` calibrates one model per candidate gs and assembles per-layer mixes exactly;
:mod:`apsq.tune.energy_table` gives each layer's energy per gs from :mod:`apsq.hw.energy`;
:mod:`apsq.tune.search` chooses gs per layer, by a statistics predictor or a measured search.
"""

from apsq.eval.metrics import Metrics
from apsq.tune.energy_table import EnergyTable, energy_table
from apsq.tune.profile import GsProfile, profile_gs
from apsq.tune.search import (
    SearchPoint,
    choice_config,
    measured_search,
    pareto_front,
    predictor_search,
)

__all__ = [
    "EnergyTable",
    "GsProfile",
    "Metrics",
    "SearchPoint",
    "choice_config",
    "energy_table",
    "measured_search",
    "pareto_front",
    "predictor_search",
    "profile_gs",
]
