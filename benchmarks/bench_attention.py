"""QuantMatmul (attention QK^T and AV, apsq gs=2) forward+backward at BERT-Base shapes, 1 thread.

`python benchmarks/bench_attention.py`: CPU ms (medians of 7) through the integer kernel
(the default), through materialised partials (kernel option ``int_gemm=False``), and a plain fp32 matmul.
"""

import contextlib
import time

import torch

from apsq.kernels import options
from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantMatmul

SHAPES = {"QK^T": ((8, 12, 128, 64), (8, 12, 64, 128)), "AV": ((8, 12, 128, 128), (8, 12, 128, 64))}


def median_ms(step, reps: int = 7) -> float:
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        step()
        times.append(time.process_time() - t0)
    return sorted(times)[reps // 2] * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name, (sa, sb) in SHAPES.items():
        mm = QuantMatmul(128, LayerQuantConfig(mode="apsq", gs=2)).train()
        a = torch.randn(*sa, requires_grad=True)
        b = torch.randn(*sb, requires_grad=True)
        mm(a, b)  # initialises the steps
        g = torch.randn(*mm(a, b).shape)
        res = {}
        for mode in ("auto", "off"):
            with options.override(int_gemm=False) if mode == "off" else contextlib.nullcontext():
                res[mode] = median_ms(lambda: mm(a, b).backward(g))
        a2, b2 = a.detach().requires_grad_(), b.detach().requires_grad_()
        fp32 = median_ms(lambda: (a2 @ b2).backward(g))
        print(f"{name:5s} integer kernel {res['auto']:.1f} ms  partials {res['off']:.1f} ms  fp32 matmul {fp32:.1f} ms")


if __name__ == "__main__":
    main()
