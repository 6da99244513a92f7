"""Issue 27 item 1: the kernel route is chosen once, from one ordered table (apsq.kernels.dispatch.TABLE).

This pins the backend the table picks for every op x granularity x device x dtype (operands that are
exact codes, power-of-two steps, every kernel usable, ``APSQ_KERNELS=auto``), so that a hole — a
combination that silently takes the reference loop — is a visible row. Per-channel attention (AV) on
CUDA took the reference loop (materialising ``[n, ..., M, N]``) while per-channel Linear / Conv2d took
Triton; it is ``triton`` now. The rows that stay ``reference`` are deliberate: half precision on the
CPU (no C kernel for it), given partials on CUDA (Triton takes operands, not partials), per-channel
partials (the chunk kernels take one step per tile step).
"""

from __future__ import annotations

import pytest
import torch

from apsq.kernels import dispatch, options

OPS = {"linear": "gemm", "conv2d": "gemm", "attention": "gemm", "attention_broadcast": "partials",
       "partials": "partials"}
"""Each public entry's request: Linear / Conv2d (im2col rows) / same-batch attention products are
``gemm`` requests; broadcast attention batches and ``psum_accumulate_fused`` take given partials."""
DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}


def _expected(op: str, gran: str, device: str, dtype: str) -> str:
    if OPS[op] == "gemm":
        if device == "cuda":
            return "triton"
        return "int_gemm" if dtype in ("f32", "f64") else "reference"
    if gran == "channel" or device == "cuda" or dtype not in ("f32", "f64"):
        return "reference"
    return "c"


TABLE = {(op, gran, dev, dt): _expected(op, gran, dev, dt)
         for op in OPS for gran in ("tensor", "channel") for dev in ("cpu", "cuda") for dt in DTYPES}
PINNED = """
linear tensor cpu f32 int_gemm | linear channel cpu f32 int_gemm | linear tensor cuda bf16 triton
attention channel cuda f32 triton | attention channel cuda bf16 triton | attention channel cpu f64 int_gemm
attention_broadcast tensor cpu f32 c | attention_broadcast channel cpu f32 reference
partials tensor cuda f32 reference | conv2d tensor cpu f16 reference | conv2d channel cuda f16 triton
"""


def test_every_row_of_the_route_table(monkeypatch):
    monkeypatch.delenv("APSQ_KERNELS", raising=False)
    assert len(TABLE) == 5 * 2 * 2 * 4
    for (op, gran, dev, dt), want in TABLE.items():
        assert dispatch.describe(OPS[op], gran, dev, DTYPES[dt]) == want, (op, gran, dev, dt)
    for row in PINNED.replace("\n", "|").split("|"):
        if row.strip():
            op, gran, dev, dt, want = row.split()
            assert TABLE[(op, gran, dev, dt)] == want == dispatch.describe(OPS[op], gran, dev, DTYPES[dt])


def test_the_table_under_forced_backends_and_missing_kernels(monkeypatch):
    f32 = torch.float32
    with options.override(backend="reference"):
        assert {dispatch.describe(o, g, d, f32) for o in ("gemm", "partials") for g in ("tensor", "channel")
                for d in ("cpu", "cuda")} == {"reference"}
    with options.override(backend="torch"):
        assert dispatch.describe("gemm", "tensor", "cpu", f32) == "torch"  # no integer kernel without C
        assert dispatch.describe("gemm", "channel", "cpu", f32) == "reference"
    with options.override(backend="triton"):
        assert dispatch.describe("gemm", "channel", "cpu", f32) == "triton"
    assert dispatch.describe("gemm", "tensor", "cpu", f32, have=("c",)) == "c"  # integer kernel not built
    assert dispatch.describe("gemm", "tensor", "cpu", f32, have=()) == "torch"  # no C compiler
    assert dispatch.describe("gemm", "tensor", "cuda", f32, have=()) == "reference"  # no Triton
    assert dispatch.describe("gemm", "tensor", "cpu", f32, operand_steps=False) == "c"  # tiles from a bmm
    assert dispatch.describe("gemm", "channel", "cpu", f32, observing=True) == "reference"


@pytest.mark.parametrize("observe", [False, True])
def test_route_runs_the_first_row_that_fits(observe):
    """Live: exact codes take the integer kernel; inexact operands fall to the next row (the tiles)."""
    from apsq.kernels import int_gemm
    from apsq.kernels.plan import Plan

    if not int_gemm.available():
        pytest.skip("the integer C kernel does not build here")
    x = torch.randint(-8, 8, (1, 5, 16)).float() / 4
    w = torch.randint(-8, 8, (1, 3, 16)).float() / 8
    s = torch.full((2,), 0.5)
    req = dispatch.Request("gemm", x, w, s, 8, Plan("apsq", 2, 2, 8), (lambda *a: None) if observe else None,
                           torch.tensor(0.25), torch.tensor(0.125))
    backend, y = dispatch.route(req)
    assert (backend, y is None) == (("c", True) if observe else ("int_gemm", False))
    inexact = dispatch.Request("gemm", x + 1e-3, w, s, 8, Plan("apsq", 2, 2, 8), None, torch.tensor(0.25),
                               torch.tensor(0.125))
    assert dispatch.route(inexact) == ("c", None)


@pytest.mark.parametrize("groups,w_steps", [(16, 1), (2, 1), (4, "per channel")])
def test_grouped_conv_is_routed_by_the_table(monkeypatch, groups, w_steps):
    """A grouped conv's batched product (all groups at once) is a table request like attention's: with
    one weight step the integer kernel takes all groups in one call; with per-channel weight steps and
    few groups, one integer product per group (tests/kernels/test_int_gemm.py: the layers take the integer path).
    Values equal the reference loop either way."""
    from apsq.kernels import int_gemm
    from apsq.psum.accumulate import psum_accumulate
    from apsq.psum.fused import conv2d_psum
    from apsq.psum.tiling import conv2d_partials

    if not int_gemm.available():
        pytest.skip("the integer C kernel does not build here")
    g = torch.Generator().manual_seed(groups)
    ci = co = 16
    x = torch.randint(-8, 8, (2, ci, 5, 5), generator=g) / 4.0
    sw = torch.tensor(0.125) if w_steps == 1 else torch.full((co,), 0.125) * (1 + (torch.arange(co) % 2))
    w = torch.randint(-8, 8, (co, ci // groups, 3, 3), generator=g) * sw.reshape(-1, 1, 1, 1)  # codes x steps
    n = -(-(ci // groups * 9) // 4)
    scales = torch.full((n,), 2.0 ** -2)
    seen = []
    real = dispatch.route
    monkeypatch.setattr(dispatch, "route", lambda r: (lambda out: seen.append((out[0], r.x.shape[0])) or out)(real(r)))
    args = ((1, 1), (1, 1), (1, 1), groups)
    y = conv2d_psum(x, w, scales, 4, *args, mode="apsq", gs=2, bits=8, x_step=torch.tensor(0.25), w_step=sw)
    assert torch.equal(y, psum_accumulate(conv2d_partials(x, w, 4, *args), scales, mode="apsq", gs=2, bits=8))
    want = [("int_gemm", groups)] if w_steps == 1 else [("int_gemm", 1)] * groups
    assert seen == want
