"""The narrow-accumulator baseline (mode 'none' with acc_bits): saturating INT PSUMs."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import apsq
from apsq.errors import APSQError
from apsq.integer import integer_forward, psum_accumulate_int
from apsq.psum.accumulate import saturating_accumulate


@given(st.integers(1, 8), st.integers(4, 20), st.integers(0, 2**16))
def test_float_and_integer_saturating_sums_agree(n, bits, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-(2**12), 2**12, (n, 5), generator=g)
    y = saturating_accumulate(t.double() * 0.25, torch.tensor(0.25, dtype=torch.float64), bits)
    r = psum_accumulate_int(t, mode="none", acc_bits=bits)
    assert torch.equal(y, r.code.double() * 0.25)
    assert r.code.min() >= -(2 ** (bits - 1)) and r.code.max() <= 2 ** (bits - 1) - 1
    expect = torch.zeros(5, dtype=torch.int64)  # step-by-step definition
    for i in range(n):
        expect = torch.clamp(expect + t[i], -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert torch.equal(r.code, expect)


def test_exact_width_equals_unbounded_and_narrow_width_saturates():
    torch.manual_seed(0)
    k = 300
    x = torch.randn(16, k)
    results = {}
    for acc_bits in (None, 16 + math.ceil(math.log2(k)), 10):
        model = nn.Sequential(nn.Linear(k, 8))
        torch.manual_seed(1)
        model[0].reset_parameters()
        apsq.quantize_(model, apsq.APSQConfig(mode="none", acc_bits=acc_bits))
        apsq.calibrate(model, [x])
        with torch.no_grad():
            results[acc_bits] = model[0].accumulate(x)
        r = integer_forward(model[0], x)
        assert torch.equal(results[acc_bits].double(), r.to_float())
    assert torch.equal(results[None], results[16 + math.ceil(math.log2(k))])
    assert not torch.equal(results[None], results[10])


def test_acc_bits_only_for_the_baseline():
    with pytest.raises(APSQError, match="acc_bits"):
        apsq.APSQConfig(mode="apsq", acc_bits=16)
    with pytest.raises(APSQError, match="acc_bits"):
        apsq.APSQConfig(mode="none", acc_bits=1)
    cfg = apsq.APSQConfig(mode="none", overrides={"fc": {"acc_bits": 12}})
    assert cfg.for_module("fc").acc_bits == 12 and cfg.for_module("other").acc_bits is None
