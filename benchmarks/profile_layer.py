"""Where one QuantLinear forward+backward spends its time (1 thread).

`python benchmarks/profile_layer.py [K N MODE GS [GRANULARITY]] [--pieces] [--reps R]` (default 3072 768 apsq
2 tensor), M = 512 tokens, tile 32, weights ~ N(0, 1/K) as in ``bench_layer.py``:

* default: the median CPU ms of ``--reps`` steps, then the torch profiler table of one step;
* ``--pieces``: the process CPU time of each piece of the step (mean over ``--reps`` steps), measured by
  wrapping the functions that do the work: the LSQ fake quantization forward / backward
  (:mod:`apsq.kernels.lsq`), the operand codes (:func:`apsq.kernels.int_gemm.int_operands`), the fused
  PSUM kernel's forward and backward (:func:`apsq.kernels.int_gemm.forward` / ``backward``), the two
  float GEMMs of the operand gradients (``torch.mm`` in :mod:`apsq.kernels.int_gemm_fn`), and the rest
  (Python, bias, autograd); beside it the fp32 ``nn.Linear`` step of the same shape.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from apsq.kernels import int_gemm, int_gemm_fn, lsq
from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantLinear

M_TOKENS = 512
TILE = 32


def make_layer(k: int, n: int, mode: str, gs: int, granularity: str) -> nn.Module:
    """The layer of ``bench_layer.py`` (seeded weights ~ N(0, 1/K), steps initialised on a first batch)."""
    torch.manual_seed(1)
    if mode == "fp32":
        layer = nn.Linear(k, n)
    else:
        layer = QuantLinear(k, n, qcfg=LayerQuantConfig(tile=TILE, mode=mode, gs=gs, psum_granularity=granularity))
    with torch.no_grad():
        nn.init.normal_(layer.weight, std=k**-0.5)
    return layer.train()


def stepper(layer: nn.Module, k: int, n: int):
    torch.manual_seed(0)
    x0, g = torch.randn(M_TOKENS, k), torch.randn(M_TOKENS, n)
    with torch.no_grad():
        layer(x0)  # initialises the steps
    x = x0.clone().requires_grad_()

    def step() -> None:
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(x).backward(g)

    return step


class _Timed:
    """Replaces ``owner.name`` by a wrapper adding its process CPU time to ``acc[label]`` (restored on exit)."""

    def __init__(self, acc: dict, owner, name: str, label: str) -> None:
        self.acc, self.owner, self.name, self.label = acc, owner, name, label

    def __enter__(self):
        self.before = vars(self.owner)[self.name]  # as stored (a staticmethod stays one when restored)
        fn = getattr(self.owner, self.name)

        def timed(*a, **kw):
            t0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                self.acc[self.label] += time.process_time() - t0

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.owner, self.name, self.before)


class _Torch:
    """``torch`` as :mod:`apsq.kernels.int_gemm_fn` sees it, with ``mm`` timed."""

    def __init__(self, acc: dict) -> None:
        self.acc = acc

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def mm(self, *a, **kw):
        t0 = time.process_time()
        try:
            return torch.mm(*a, **kw)
        finally:
            self.acc["operand-gradient sgemms (2)"] += time.process_time() - t0


def pieces(k: int, n: int, mode: str, gs: int, granularity: str, reps: int) -> dict[str, float]:
    """Mean CPU ms per step of each piece (see the module docstring), ``step`` and ``fp32 nn.Linear``."""
    acc: dict[str, float] = collections.defaultdict(float)
    fp32 = stepper(make_layer(k, n, "fp32", 1, "tensor"), k, n)
    step = stepper(make_layer(k, n, mode, gs, granularity), k, n)
    wraps = [_Timed(acc, lsq._LSQFakeQuant, "forward", "LSQ fake-quant forward (x, W)"),
             _Timed(acc, int_gemm, "int_operands", "operand codes (x, W)"),
             _Timed(acc, int_gemm, "forward", "PSUM kernel forward"),
             _Timed(acc, int_gemm, "backward", "PSUM kernel backward"),
             _Timed(acc, lsq._LSQFakeQuant, "backward", "LSQ fake-quant backward (x, W)")]
    torch_before = int_gemm_fn.torch
    for w in wraps:
        w.__enter__()
    int_gemm_fn.torch = _Torch(acc)
    total = fp_total = 0.0
    try:
        for _ in range(2):
            step()
            fp32()
        acc.clear()
        for _ in range(reps):  # interleaved with the fp32 layer
            t0 = time.process_time()
            step()
            total += time.process_time() - t0
            t0 = time.process_time()
            fp32()
            fp_total += time.process_time() - t0
    finally:
        int_gemm_fn.torch = torch_before
        for w in reversed(wraps):
            w.__exit__()
    out = {label: v / reps * 1e3 for label, v in acc.items()}
    out["rest (Python, bias, autograd)"] = (total - sum(acc.values())) / reps * 1e3
    out["step"] = total / reps * 1e3
    out["fp32 nn.Linear step"] = fp_total / reps * 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", nargs="*", help="K N MODE GS [GRANULARITY] (default 3072 768 apsq 2 tensor)")
    ap.add_argument("--pieces", action="store_true", help="CPU time per piece of the step instead of the profiler")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    a = args.shape or ["3072", "768", "apsq", "2"]
    k, n, mode, gs = int(a[0]), int(a[1]), a[2], int(a[3])
    granularity = a[4] if len(a) > 4 else "tensor"
    torch.set_num_threads(1)
    if args.pieces:
        res = pieces(k, n, mode, gs, granularity, args.reps)
        fp = res["fp32 nn.Linear step"]
        print(f"M{M_TOKENS} K{k} N{n} {mode} gs={gs} {granularity}, 1 thread, mean of {args.reps} steps (CPU ms, x fp32 step):")
        for label, v in res.items():
            print(f"  {label:34s} {v:8.1f}  {v / fp:5.2f}")
        return
    step = stepper(make_layer(k, n, mode, gs, granularity), k, n)
    for _ in range(3):
        step()
    times = []
    for _ in range(args.reps):
        t0 = time.process_time()
        step()
        times.append(time.process_time() - t0)
    print(f"step: {sorted(times)[len(times) // 2] * 1e3:.1f} ms CPU (median of {args.reps})")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
