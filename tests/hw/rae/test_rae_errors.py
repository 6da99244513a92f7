"""Bad input is rejected with APSQError before any simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apsq.errors import APSQError
from apsq.hw.rae import RAEParams, simulate

T = np.ones((4, 4), dtype=np.int64)
E = np.array([1, 2, 3, 4])


@pytest.mark.parametrize("gs", [0, 5, 8])
def test_gs_outside_banks(gs):
    with pytest.raises(APSQError, match=r"gs must be in \[1, 4\]"):
        simulate(T, E, gs=gs)


@pytest.mark.parametrize("bad", [-9, 24, 40])
def test_exponent_outside_shifter(bad):
    e = E.copy()
    e[2] = bad
    with pytest.raises(APSQError, match=r"shifter range \[-8, 23\]"):
        simulate(T, e, gs=2)


def test_wider_shifter_accepts_more():
    p = RAEParams(frac_bits=10, shift_bits=6)
    assert (p.exp_min, p.exp_max) == (-10, 53)


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**40])
def test_partials_overflow_32_bits(value):
    t = T.copy()
    t[1, 3] = value
    with pytest.raises(APSQError, match="overflow the 32-bit"):
        simulate(t, E, gs=2)


def test_non_integer_and_shapes():
    with pytest.raises(APSQError, match="integers"):
        simulate(T * 1.0, E, gs=2)
    with pytest.raises(APSQError, match="integers"):
        simulate(torch.ones(4, 4), E, gs=2)
    with pytest.raises(APSQError, match=r"exponents must be \[n\]"):
        simulate(T, E[:3], gs=2)
    with pytest.raises(APSQError, match=r"partials must be \[n, L\]"):
        simulate(np.ones(4, dtype=np.int64), E, gs=2)
    with pytest.raises(APSQError, match="lanes"):
        simulate(T, E, gs=2, lanes=0)
