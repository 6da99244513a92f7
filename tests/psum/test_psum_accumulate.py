"""Properties of the PSUM accumulation modes (docs/apsq-method.md section 3)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from apsq.errors import APSQError, NonFiniteInputError
from apsq.functional import linear_partials, psum_accumulate
from apsq.psum import closing_steps, conv2d_partials
from apsq.quant.ops import fake_quantize


@st.composite
def psum_case(draw, max_n=9):
    n = draw(st.integers(1, max_n))
    lanes = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    mag = draw(st.sampled_from([1.0, 30.0, 500.0]))
    g = torch.Generator().manual_seed(seed)
    # integer-valued partials (as quantized operands give): every intermediate exact in fp32
    partials = torch.round(torch.randn(n, lanes, generator=g) * mag)
    exps = torch.tensor(draw(st.lists(st.integers(-2, 6), min_size=n, max_size=n)), dtype=torch.float32)
    return partials, torch.exp2(exps)


@given(psum_case())
def test_none_is_the_exact_sum(case):
    partials, scales = case
    assert torch.equal(psum_accumulate(partials, scales, mode="none"), partials.sum(0))


@given(psum_case(), st.integers(2, 8))
def test_psq_is_sum_of_independently_quantized_tiles(case, bits):
    partials, scales = case
    y = psum_accumulate(partials, scales, mode="psq", bits=bits)
    expect = sum(fake_quantize(partials[i], scales[i], bits) for i in range(partials.shape[0]))
    assert torch.equal(y, expect)


@given(psum_case(), st.integers(2, 8))
def test_gs1_is_eq10_step_by_step(case, bits):
    """gs = 1: AP_i = Q_{s_i}(Tp_i + AP_{i-1}) — the paper's Eq. (10)."""
    partials, scales = case
    ap = torch.zeros_like(partials[0])
    for i in range(partials.shape[0]):
        ap = fake_quantize(partials[i] + ap, scales[i], bits)
    assert torch.equal(psum_accumulate(partials, scales, mode="apsq", gs=1, bits=bits), ap)


@given(psum_case(), st.integers(0, 4))
def test_gs_at_least_n_closes_a_single_group(case, extra):
    """gs >= n: every tile but the last is stored on its own, the last closes one group."""
    partials, scales = case
    n = partials.shape[0]
    pending = sum((fake_quantize(partials[j], scales[j], 8) for j in range(n - 1)), torch.zeros_like(partials[0]))
    expect = fake_quantize(partials[-1] + pending, scales[-1], 8)
    assert torch.equal(psum_accumulate(partials, scales, mode="apsq", gs=n + extra), expect)


@given(psum_case(), st.integers(1, 5))
def test_apsq_groups_match_the_definition(case, gs):
    """Direct transcription of the definition, including a short last group."""
    partials, scales = case
    n = partials.shape[0]
    acc = torch.zeros_like(partials[0])
    for start in range(0, n, gs):
        last = min(start + gs, n) - 1
        stored = [fake_quantize(partials[j], scales[j], 8) for j in range(start, last)]
        acc = fake_quantize(partials[last] + sum(stored, torch.zeros_like(acc)) + acc, scales[last], 8)
    assert torch.equal(psum_accumulate(partials, scales, mode="apsq", gs=gs), acc)


@given(psum_case(), st.integers(1, 4), st.integers(2, 8))
def test_output_is_a_code_of_the_last_step(case, gs, bits):
    partials, scales = case
    y = psum_accumulate(partials, scales, mode="apsq", gs=gs, bits=bits)
    codes = y / scales[-1]
    assert torch.equal(codes, torch.round(codes))
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1


def test_closing_steps():
    assert closing_steps(7, 3) == [False, False, True, False, False, True, True]
    assert closing_steps(3, 1) == [True, True, True]
    assert closing_steps(2, 5) == [False, True]


def test_gradients_flow_to_partials_and_scales():
    partials = (torch.randn(5, 4) * 20).requires_grad_()
    log2 = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0], requires_grad=True)
    y = psum_accumulate(partials, torch.exp2(log2), mode="apsq", gs=2)
    y.sum().backward()
    assert partials.grad is not None and log2.grad is not None
    assert torch.isfinite(log2.grad).all() and log2.grad.abs().sum() > 0


def test_linear_partials_sum_to_the_matmul_with_zero_padded_last_tile():
    x = torch.randint(-5, 5, (3, 7, 70)).float()
    w = torch.randint(-5, 5, (11, 70)).float()
    p = linear_partials(x, w, 32)
    assert p.shape == (3, 3, 7, 11)
    assert torch.equal(p.sum(0), x @ w.T)
    assert torch.equal(p[2], x[..., 64:] @ w[:, 64:].T)


@pytest.mark.parametrize("groups,stride,padding,dilation", [(1, 1, 1, 1), (2, 2, 0, 1), (4, 1, 2, 2)])
def test_conv2d_partials_sum_to_conv(groups, stride, padding, dilation):
    x = torch.randint(-4, 4, (2, 8, 9, 9)).double()
    w = torch.randint(-4, 4, (12, 8 // groups, 3, 3)).double()
    p = conv2d_partials(x, w, 5, (stride, stride), (padding, padding), (dilation, dilation), groups)
    ref = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups)
    assert p.shape[1:] == ref.shape
    assert torch.equal(p.sum(0), ref)


def test_conv2d_im2col_order_is_channel_then_kernel_row_then_column():
    x = torch.arange(2 * 3 * 3, dtype=torch.float64).reshape(1, 2, 3, 3)
    w = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    w[0, 1, 0, 2] = 1.0  # k = (c*kh + u)*kw + v = (1*3 + 0)*3 + 2 = 11 -> tile 11 // 4 = 2
    p = conv2d_partials(x, w, 4, padding=(1, 1))
    assert p[2].abs().sum() > 0 and p[0].abs().sum() == 0 and p[1].abs().sum() == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="apsq", gs=0), "gs"),
        (dict(mode="apsq", gs=-2), "gs"),
        (dict(mode="fancy"), "mode"),
        (dict(mode="psq", bits=1), "bits"),
        (dict(mode="psq", bits=17), "bits"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(APSQError, match=match):
        psum_accumulate(torch.ones(3, 2), torch.ones(3), **kwargs)


def test_non_power_of_two_scale_is_rejected():
    with pytest.raises(APSQError, match="powers of two"):
        psum_accumulate(torch.ones(3, 2), torch.tensor([1.0, 3.0, 2.0]), mode="apsq", gs=2)


def test_scale_count_must_match_tiles():
    with pytest.raises(APSQError, match="one step size per tile"):
        psum_accumulate(torch.ones(3, 2), torch.ones(2), mode="psq")


def test_nan_partials_are_rejected():
    p = torch.ones(3, 2)
    p[1, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match="NaN"):
        psum_accumulate(p, torch.ones(3), mode="apsq")


def test_mismatched_shapes_in_tiling():
    with pytest.raises(APSQError, match="K=10"):
        linear_partials(torch.ones(2, 10), torch.ones(3, 12), 4)
    with pytest.raises(APSQError, match="tile"):
        linear_partials(torch.ones(2, 10), torch.ones(3, 10), 0)
