"""The Triton kernels compile for a CUDA GPU (sm_90: H100 / H200) on a machine without one.

The interpreter tests (test_triton_psum.py) check the numbers; this checks what only the compiler
sees (loop-carried types, constexpr branches, dot shapes and dtypes, shared memory) for the
specializations the layers use, down to a cubin (Triton ships ptxas). Skipped when the CUDA backend
cannot compile here.
"""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[gpu]')")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from apsq.kernels import triton_psum

I32 = "i32"
F32 = "fp32"

# (kernel, pointer/scalar types of the non-constexpr parameters in order, constexprs); the last two
# i32 of each: the flat grid's block counts (launch_grid)
CASES = [
    ("fwd", ["*i8", "*i8", "*fp32", "*fp32", "*fp32", "*fp32", "*u8", *[I32] * 8, F32, F32, I32, I32],
     dict(MODE=2, WIDE=False, BM=64, BN=64, TP=32)),
    ("fwd", ["*i16", "*i16", "*fp64", "*fp64", "*fp64", "*fp64", "*i16", *[I32] * 8, F32, F32, I32, I32],
     dict(MODE=1, WIDE=True, BM=64, BN=64, TP=32)),
    ("bwd_operand", ["*i8", "*i8", "*bf16", "*fp32", "*fp32", "*fp32", "*bf16", "*u8", "*bf16", *[I32] * 8, F32, F32, I32, I32],
     dict(MODE=2, WIDE=False, LOWP=True, FOR_W=True, PREC="ieee", BR=64, BL=64, TP=32)),
    ("bwd_operand", ["*i8", "*i8", "*fp32", "*fp32", "*fp32", "*fp32", "*fp32", "*u8", "*fp32", *[I32] * 8, F32, F32, I32, I32],
     dict(MODE=1, WIDE=False, LOWP=False, FOR_W=False, PREC="tf32", BR=64, BL=64, TP=64)),
    ("bwd_operand", ["*i8", "*i8", "*fp64", "*fp64", "*fp64", "*fp64", "*fp64", "*u8", "*fp64", *[I32] * 8, F32, F32, I32, I32],
     dict(MODE=2, WIDE=False, LOWP=False, FOR_W=True, PREC="ieee", BR=32, BL=32, TP=256)),  # _operand_block
    ("bwd_operand", ["*i8", "*i8", "*fp32", "*fp32", "*fp32", "*fp32", "*fp32", "*u8", "*fp32", *[I32] * 8, F32, F32, I32, I32],
     dict(MODE=2, WIDE=False, LOWP=False, FOR_W=False, PREC="ieee", BR=32, BL=32, TP=512)),  # the deepest (float32)
    ("bwd_steps", ["*i8", "*i8", "*fp32", "*fp32", "*fp32", "*fp32", "*u8", "*fp64", *[I32] * 8, F32, F32, I32, I32],
     dict(MODE=2, WIDE=False, PER_CH=True, SUM_DOT=False, BM=64, BN=64, TP=32)),
]


@pytest.mark.parametrize("name,types,consts", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_kernel_compiles_for_sm90(monkeypatch, name, types, consts):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fn = triton_psum._kernel(name)
    params = list(inspect.signature(triton_psum._BODIES[name]).parameters)
    it = iter(types)
    signature = {p: "constexpr" if p in consts else next(it) for p in params}
    assert next(it, None) is None, "CASES lists more types than the kernel has parameters"
    src = ASTSource(fn=fn, signature=signature, constexprs={(params.index(k),): v for k, v in consts.items()})
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 4, "enable_fp_fusion": False})
    except RuntimeError as e:  # no usable ptxas / CUDA backend on this machine
        if "ptxas" in str(e).lower() and "error" not in str(e).lower():
            pytest.skip(f"the CUDA backend cannot compile here: {e}")
        raise
    assert compiled.asm["cubin"]
    if name == "bwd_operand":  # the block size the host picks for this depth and dtype
        ct = torch.float64 if "fp64" in types[2] else torch.float32
        assert consts["BR"] == triton_psum._operand_block(consts["TP"], ct)
    assert compiled.metadata.shared <= 227 * 1024  # fits an H100 / H200 SM
