"""The group-size limits, tied together (issue 27 item 4): stated once in ``apsq.config``.

- ``GS_MAX`` (65,536): what the PyTorch model (``APSQConfig``) and the energy model's ``EnergySpec`` accept;
- ``RAE_BANKS`` (4): the RAE's banks, ``apsq.hw.rae.NUM_BANKS``: the RTL runs gs <= 4;
- every built-in accelerator's ``buffers.psum.banks`` is the RAE's: the energy model refuses (``on_limit=
  "error"``, the CLI) or warns above it.
"""

import warnings

import pytest

from apsq.config import GS_MAX, RAE_BANKS, APSQConfig
from apsq.errors import APSQError
from apsq.hw.accelerator import BUILTIN_ACCELERATORS, load_accelerator
from apsq.hw.energy import EnergySpec, evaluate
from apsq.hw.workloads import Layer, Workload

W = Workload("g", (Layer("g", "linear", 64, 256, 64),))


def test_the_rtl_banks_are_the_config_constant():
    from apsq.hw.rae import NUM_BANKS, RAEParams
    from apsq.hw.rae.beats import validate_layer

    assert NUM_BANKS == RAE_BANKS == 4
    assert RAEParams().capacity(RAE_BANKS) > 0
    with pytest.raises(APSQError, match="gs"):
        RAEParams().capacity(RAE_BANKS + 1)
    with pytest.raises(APSQError, match="gs"):
        validate_layer([[1]], [0], RAE_BANKS + 1, RAEParams())


@pytest.mark.parametrize("name", sorted(BUILTIN_ACCELERATORS))
def test_every_builtin_accelerator_has_the_rae_banks(name):
    assert load_accelerator(name).buffers.psum.banks == RAE_BANKS


def test_energy_model_limit_is_the_accelerator_banks():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(W, "ws", "apsq", RAE_BANKS)  # at the limit: silent
    with pytest.warns(UserWarning, match=f"exceeds the PSUM buffer's {RAE_BANKS} banks"):
        evaluate(W, "ws", "apsq", RAE_BANKS + 1)  # the API warns and prices by capacity
    with pytest.raises(APSQError, match=f"gs={RAE_BANKS + 1} for layer 'g' exceeds"):
        evaluate(W, EnergySpec("ws", gs=RAE_BANKS + 1, on_limit="error"))  # the CLI's policy


def test_the_model_limit_is_gs_max_everywhere():
    assert GS_MAX >= RAE_BANKS
    assert APSQConfig(gs=GS_MAX).gs == GS_MAX
    with pytest.raises(APSQError, match="gs"):
        APSQConfig(gs=GS_MAX + 1)
    assert EnergySpec("ws", gs=GS_MAX).gs == GS_MAX  # the banks are checked per layer, when priced
    with pytest.raises(APSQError, match="gs"):
        EnergySpec("ws", gs=GS_MAX + 1)
    with pytest.raises(APSQError, match="gs"):
        EnergySpec("ws", gs={"*": GS_MAX + 1})
