"""Properties of the quantization math: codes in range, exact powers of two, round half up, LSQ."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from apsq.errors import APSQError
from apsq.quant import LSQQuantizer, best_pow2_exponent, is_power_of_two
from apsq.quant.ops import fake_quantize, pow2_ste, qrange, quantize_codes, round_half_up, round_ste

floats = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@given(st.lists(floats, min_size=1, max_size=64), st.integers(2, 16), st.integers(-12, 12))
def test_codes_in_range_and_fake_quant_is_code_times_step(values, bits, e):
    x = torch.tensor(values)
    s = torch.tensor(2.0**e)
    qn, qp = qrange(bits)
    codes = quantize_codes(x, s, bits)
    assert codes.min() >= qn and codes.max() <= qp
    assert torch.equal(fake_quantize(x, s, bits), codes.to(torch.float32) * s)


@given(st.lists(floats, min_size=1, max_size=64), st.integers(-8, 8))
def test_in_range_error_at_most_half_a_step(values, e):
    x = torch.tensor(values)
    s = 2.0**e
    q = fake_quantize(x, torch.tensor(s), 16)
    inside = x.abs() < (2**15 - 1) * s
    assert ((q - x).abs()[inside] <= s / 2 + 1e-6 * x.abs()[inside]).all()


def test_round_half_up_on_ties():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.499, -0.501])
    assert round_half_up(x).tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.0, -1.0]


def test_round_ste_passes_gradient_through():
    x = torch.tensor([0.3, 1.7, -2.5], requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


@given(st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=16))
def test_pow2_ste_gives_exact_powers_of_two(logs):
    s = pow2_ste(torch.tensor(logs))
    assert bool(is_power_of_two(s).all())
    assert torch.equal(torch.log2(s), torch.floor(torch.tensor(logs) + 0.5))


def test_is_power_of_two_rejects_others():
    s = torch.tensor([1.0, 0.5, 2.0**-20, 3.0, 0.0, -2.0, float("inf"), 0.75])
    assert is_power_of_two(s).tolist() == [True, True, True, False, False, False, False, False]


def test_lsq_gradient_to_scale_matches_formula():
    """LSQ: dQ/ds = round(x/s) - x/s inside the range, qn / qp when clamped (Esser et al. 2020, Eq. 3)."""
    x = torch.tensor([0.3, 1.26, -0.74, 100.0, -100.0])
    s = torch.tensor(0.5, requires_grad=True)
    fake_quantize(x, s, 4).sum().backward()
    v = x / 0.5
    expect = torch.where(v > 7, torch.tensor(7.0), torch.where(v < -8, torch.tensor(-8.0), torch.floor(v + 0.5) - v))
    assert torch.allclose(s.grad, expect.sum())


def test_lsq_gradient_to_input_is_zero_where_clamped():
    x = torch.tensor([0.3, 1000.0, -1000.0], requires_grad=True)
    fake_quantize(x, torch.tensor(1.0), 8).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("bits", [0, 1, 17, 32, 2.5, True])
def test_bits_out_of_range_is_a_clear_error(bits):
    with pytest.raises(APSQError, match="bits"):
        qrange(bits)


def test_best_pow2_exponent_never_worse_than_no_clip():
    torch.manual_seed(1)
    x = torch.randn(1000) * 3
    e = best_pow2_exponent(x, 8)
    e_top = math.ceil(math.log2(x.abs().max() / 127))
    err = lambda k: float(((fake_quantize(x, torch.tensor(2.0**k), 8) - x) ** 2).sum())  # noqa: E731
    assert err(int(e)) <= err(e_top)
    assert e <= e_top


def test_lsq_quantizer_per_channel_and_learnable():
    q = LSQQuantizer(8, channel_axis=0, num_channels=3)
    w = torch.randn(3, 10) * torch.tensor([[0.1], [1.0], [10.0]])
    y = q(w)
    assert q.scale().shape == (3,) and bool(is_power_of_two(q.scale()).all())
    assert q.exponent()[0] < q.exponent()[2]
    assert torch.equal(y, q.codes(w).float() * q.scale().reshape(3, 1))
    y.pow(2).sum().backward()
    assert q.log2_scale.grad is not None and q.log2_scale.grad.shape == (3,)
