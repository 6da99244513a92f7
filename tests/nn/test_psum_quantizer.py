"""PSUMQuantizer accumulates every PSUM mode (issue 27 item 2): mode ``none`` exact, or saturating at
``acc_bits`` like the reference narrow accumulator, through the same ``linear`` / ``conv2d`` / ``matmul`` /
``forward`` entry points as psq / apsq; and it picks the dtype in which the accumulation is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from apsq.errors import APSQError
from apsq.nn.psum_quantizer import PSUMQuantizer
from apsq.psum.accumulate import saturating_accumulate
from apsq.psum.tiling import conv2d_partials, linear_partials, matmul_partials


def _codes(gen: torch.Generator, *shape: int, step: float) -> torch.Tensor:
    """Fake-quantized values: int8 codes times a power-of-two step (float64: every sum exact)."""
    return torch.randint(-128, 128, shape, generator=gen).to(torch.float64) * step


def _ops(seed: int):
    """``(name, call(psum, x_step, w_step), tiles, exact, unit)`` for a Linear, a grouped Conv2d and a matmul."""
    g = torch.Generator().manual_seed(seed)
    sx, sw = 2.0**-3, torch.tensor([2.0**-5, 2.0**-4, 2.0**-6, 2.0**-5])  # per-tensor x, per-channel w steps
    x, w = _codes(g, 3, 5, 40, step=sx), _codes(g, 4, 40, step=1.0) * sw[:, None]
    xc, wc = _codes(g, 2, 4, 6, 6, step=sx), _codes(g, 4, 2, 3, 3, step=1.0) * sw[:, None, None, None]
    a, b = _codes(g, 2, 3, 7, 40, step=sx), _codes(g, 2, 3, 40, 9, step=2.0**-2)
    xs, ws, bs = torch.tensor([sx]), sw, torch.tensor([2.0**-2])
    conv = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 2}
    return [
        ("linear", lambda p, s1, s2: p.linear(x, w, 8, x_step=s1, w_step=s2), linear_partials(x, w, 8),
         F.linear(x, w), (xs * ws).reshape(-1), (xs, ws)),
        ("conv2d", lambda p, s1, s2: p.conv2d(xc, wc, 8, conv["stride"], conv["padding"], conv["dilation"], 2,
                                              x_step=s1, w_step=s2),
         conv2d_partials(xc, wc, 8, **conv), F.conv2d(xc, wc, None, **conv), (xs * ws).reshape(-1, 1, 1), (xs, ws)),
        ("matmul", lambda p, s1, s2: p.matmul(a, b, 8, a_step=s1, b_step=s2), matmul_partials(a, b, 8), a @ b,
         (xs * bs).reshape(-1), (xs, bs)),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mode_none_is_the_exact_product(seed: int) -> None:
    for name, call, tiles, exact, _, steps in _ops(seed):
        y = call(PSUMQuantizer(tiles.shape[0], "none"), *steps)
        assert torch.equal(y, exact), name
        assert torch.equal(y, tiles.sum(0)), name  # the tile sums, exactly: float64 holds every sum


@pytest.mark.parametrize("acc_bits", [12, 14, 40])
@pytest.mark.parametrize("seed", [0, 3])
def test_mode_none_saturates_like_the_narrow_accumulator(acc_bits: int, seed: int) -> None:
    """Every op with ``acc_bits`` equals :func:`saturating_accumulate` of its tiles (unit ``s_a * s_b``),
    ``forward(tiles, unit)`` too; 12 bits saturate these K = 40 / 54 reductions, 40 bits never do."""
    for name, call, tiles, exact, unit, steps in _ops(seed):
        psum = PSUMQuantizer(tiles.shape[0], "none", acc_bits=acc_bits)
        want = saturating_accumulate(tiles, unit, acc_bits)
        assert torch.equal(call(psum, *steps), want), name
        assert torch.equal(psum(tiles, unit), want), name
        assert torch.equal(want, exact) == (acc_bits == 40), name
        with pytest.raises(APSQError, match="acc_bits=.*operand steps"):
            call(psum, None, None)


def test_acc_bits_belongs_to_mode_none() -> None:
    with pytest.raises(APSQError, match="acc_bits.*mode 'none'.*'apsq'"):
        PSUMQuantizer(4, "apsq", acc_bits=16)
    with pytest.raises(APSQError, match="acc_bits"):
        PSUMQuantizer(4, "none", acc_bits=1)
    assert not PSUMQuantizer(4, "none").learns_steps and PSUMQuantizer(4, "psq").learns_steps
    assert "acc_bits=16" in repr(PSUMQuantizer(4, "none", acc_bits=16))


def test_work_dtype_of_every_mode() -> None:
    """Mode none: float32 while ``K * 2^(a-1) * 2^(b-1)`` fits 24 bits (the data bound is not even asked),
    else the data bound decides; psq / apsq: the PSUM bound of :mod:`apsq.nn.exactness`."""
    asked: list[torch.dtype] = []

    def bound(value: float):
        def sum_bound(dt: torch.dtype) -> float:
            asked.append(dt)
            return value
        return sum_bound

    none = PSUMQuantizer(4, "none")
    kw = {"tile": 8, "a_bits": 8, "b_bits": 8, "unit_exponent": lambda: torch.zeros(1, dtype=torch.int64)}
    assert none.work_dtype(torch.float32, "l", k=1024, sum_bound=bound(2.0**40), **kw) == torch.float32
    assert asked == []  # 10 + 7 + 7 = 24 bits: static
    assert none.work_dtype(torch.bfloat16, "l", k=4096, sum_bound=bound(2.0**20), **kw) == torch.float32
    assert none.work_dtype(torch.float32, "l", k=4096, sum_bound=bound(2.0**30), **kw) == torch.float64
    assert asked == [torch.float32, torch.float32]
    with pytest.raises(APSQError, match="layer big: .*float64's 53"):
        none.work_dtype(torch.float32, "big", k=4096, sum_bound=bound(2.0**60), **kw)
    apsq = PSUMQuantizer(4, "apsq", gs=2)
    with torch.no_grad():
        apsq.log2_scales.copy_(torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert apsq.work_dtype(torch.float32, "l", k=32, sum_bound=bound(0.0), **kw) == torch.float32
    with torch.no_grad():
        apsq.log2_scales.copy_(torch.tensor([0.0, 0.0, 30.0, 30.0]))  # steps 2^30 above the unit: > 24 bits
    assert apsq.work_dtype(torch.float32, "l", k=32, sum_bound=bound(0.0), **kw) == torch.float64
    assert len(asked) == 3  # psq / apsq never ask for the data bound
