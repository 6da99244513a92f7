"""Integer-kernel time per micro-kernel build (kernel option ``isa``), K3072->N768, M=512, apsq gs=2, 1 thread.

`python benchmarks/bench_kernel_isa.py`: forward and backward-pass CPU ms (medians of 5) of
apsq.kernels.int_gemm for each build this CPU can run, the operand-code conversion, and one fp32 GEMM of
the same shape for scale.
"""

import time

import torch

from apsq.kernels import int_gemm as _cgemm
from apsq.kernels import options
from apsq.kernels.plan import Plan

M, K, N, T = 512, 3072, 768, 32


def cpu_ms(fn, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return sorted(times)[reps // 2] * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sx = torch.tensor(2.0**-4)
    sw = torch.exp2(torch.randint(-8, -5, (N,)).float())
    x = torch.randint(-128, 128, (M, K)).float() * sx
    w = torch.randint(-128, 128, (N, K)).float() * sw[:, None]
    n = K // T
    steps, plan = [2.0**-1] * n, Plan("apsq", n, 2, 8)
    out = torch.empty(1, M, N)
    last_bad = torch.empty(1, M, N, dtype=plan.bad_dtype)
    g = torch.randn(1, M, N)
    for isa in _cgemm.GEMM_ISAS:
        with options.override(isa=isa):
            if _cgemm.library() is None:
                print(f"{isa:9s} unavailable: {_cgemm.build_error()}")
                continue
            ops = _cgemm.int_operands(x, w, T, sx, sw)
            fwd = cpu_ms(lambda: _cgemm.forward(ops, steps, plan, out, last_bad))
            bwd = cpu_ms(lambda: _cgemm.backward(ops, steps, plan, g, last_bad))
            print(f"{isa:9s} {_cgemm.isa():12s} forward {fwd:6.1f} ms  backward pass {bwd:6.1f} ms")
    print(f"operand codes (both operands, one C pass each) {cpu_ms(lambda: _cgemm.int_operands(x, w, T, sx, sw)):.1f} ms")
    print(f"fp32 GEMM {cpu_ms(lambda: x @ w.t()):.1f} ms")


if __name__ == "__main__":
    main()
