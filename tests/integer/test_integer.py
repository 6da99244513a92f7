"""The float (fake-quant) path and the integer golden model agree bit for bit."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import apsq
from apsq.errors import APSQError
from apsq.functional import psum_accumulate
from apsq.integer import integer_forward, psum_accumulate_int, shift_round_clamp


@st.composite
def int_case(draw):
    n = draw(st.integers(1, 10))
    lanes = draw(st.integers(1, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    mag = draw(st.sampled_from([3, 200, 20000, 500000]))
    t = torch.randint(-mag, mag + 1, (n, lanes), generator=g, dtype=torch.int64)
    e = torch.tensor(draw(st.lists(st.integers(-3, 12), min_size=n, max_size=n)), dtype=torch.int64)
    return t, e


@given(int_case(), st.sampled_from(["none", "psq", "apsq"]), st.integers(1, 5), st.integers(2, 12))
def test_float_path_equals_integer_path(case, mode, gs, bits):
    t, e = case
    y = psum_accumulate(t.to(torch.float32), torch.exp2(e.float()), mode=mode, gs=gs, bits=bits)
    r = psum_accumulate_int(t, e, mode=mode, gs=gs, bits=bits)
    assert torch.equal(y.double(), r.to_float())


@given(int_case(), st.integers(1, 5))
def test_integer_apsq_codes_in_range(case, gs):
    t, e = case
    r = psum_accumulate_int(t, e, mode="apsq", gs=gs, bits=8)
    assert r.code.min() >= -128 and r.code.max() <= 127
    assert int(r.exponent) == int(e[-1])


@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 20))
def test_shift_round_clamp_is_round_half_up(v, shift):
    got = int(shift_round_clamp(torch.tensor([v]), torch.tensor(shift), 16)[0])
    expect = max(-(2**15), min(2**15 - 1, (2 * v + 2**shift) // 2 ** (shift + 1)))  # floor(v/2^s + 1/2)
    assert got == expect


def test_per_lane_exponents():
    t = torch.tensor([[100, 100], [50, 50]])
    e = torch.tensor([[1, 2], [1, 2]])
    r = psum_accumulate_int(t, e, mode="apsq", gs=1, bits=8)
    y0 = psum_accumulate(t[:, :1].float(), torch.tensor([2.0, 2.0]), mode="apsq", gs=1)
    y1 = psum_accumulate(t[:, 1:].float(), torch.tensor([4.0, 4.0]), mode="apsq", gs=1)
    assert torch.equal(r.to_float(), torch.cat([y0, y1]).double())


def test_integer_inputs_only():
    with pytest.raises(APSQError, match="integer tensor"):
        psum_accumulate_int(torch.ones(2, 2), torch.zeros(2, dtype=torch.int64), mode="apsq")


def _check_layer(layer, *xs):
    with torch.no_grad():
        y = layer.accumulate(*xs)
    r = integer_forward(layer, *xs)
    assert torch.equal(y.double(), r.to_float())


@pytest.mark.parametrize("mode,gs", [("none", 1), ("psq", 1), ("apsq", 1), ("apsq", 2), ("apsq", 3), ("apsq", 4)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_random_linear_and_conv_layers_are_bit_exact(mode, gs, per_channel):
    torch.manual_seed(gs)
    model = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 25, 10))
    apsq.quantize_(model, apsq.APSQConfig(mode=mode, gs=gs, tile=16, weight_per_channel=per_channel))
    x = torch.randn(3, 6, 5, 5)
    apsq.calibrate(model, [x])
    _check_layer(model[0], x)
    with torch.no_grad():
        h = torch.flatten(torch.relu(model[0](x)), 1)
    _check_layer(model[3], h)


def test_grouped_conv_and_matmul_are_bit_exact():
    from apsq.nn import QuantMatmul
    from apsq.nn.config import LayerQuantConfig

    conv = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    model = nn.Sequential(conv)
    apsq.quantize_(model, apsq.APSQConfig(gs=2, tile=8))
    x = torch.randn(2, 8, 6, 6)
    apsq.calibrate(model, [x])
    _check_layer(model[0], x)
    mm = QuantMatmul(40, LayerQuantConfig(gs=3, tile=8))
    a, b = torch.randn(2, 3, 5, 40), torch.randn(2, 3, 40, 7)
    mm.start_calibration()
    mm(a, b)
    mm.finish_calibration()
    _check_layer(mm, a, b)
