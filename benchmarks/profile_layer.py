"""Where one QuantLinear forward+backward spends its time (torch profiler, 1 thread).

`python benchmarks/profile_layer.py [K N MODE GS]` (default 3072 768 apsq 2), M = 512 tokens:
the median CPU ms of 5 steps, then the profiler table of one step.
"""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantLinear


def main(argv: list[str]) -> None:
    k, n, mode, gs = (int(argv[0]), int(argv[1]), argv[2], int(argv[3])) if argv else (3072, 768, "apsq", 2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = QuantLinear.from_float(torch.nn.Linear(k, n), LayerQuantConfig(mode=mode, gs=gs))
    x = torch.randn(512, k, requires_grad=True)
    g = torch.randn(512, n)
    layer(x)  # initialises the steps

    def step() -> None:
        layer(x).backward(g)

    for _ in range(3):
        step()
    times = []
    for _ in range(5):
        t0 = time.process_time()
        step()
        times.append(time.process_time() - t0)
    print(f"step: {sorted(times)[2] * 1e3:.1f} ms CPU (median of 5)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main(sys.argv[1:])
