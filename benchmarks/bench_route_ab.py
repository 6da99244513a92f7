"""A/B of the PSUM routing (issue 27 item 1): ``psum/fused.py`` and ``kernels/dispatch.py`` of git revision
REV (loaded from git as modules beside the current ones; the kernels themselves are shared) against the
current ones: values and gradients compared bit for bit, forward+backward CPU time interleaved in one
process (medians), at BERT FFN shapes, a decode row and attention products, per tensor and per channel.

Usage: ``python benchmarks/bench_route_ab.py REV`` (e.g. the commit before the route table, 7430654).
"""
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
def main() -> None:
    import apsq.kernels.int_gemm_fn as igf
    from apsq.psum import fused as new
    sys.modules["apsq.psum.fused_int"] = igf  # the old module path of the integer Function
    ROOT, REV = Path(__file__).resolve().parents[1], sys.argv[1] if len(sys.argv) > 1 else "HEAD"


    def show(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{REV}:{path}"], capture_output=True, text=True,
                              check=True).stdout


    src = show("src/apsq/psum/fused.py")
    old = types.ModuleType("old_fused"); sys.modules["old_fused"] = old
    exec(compile(src, "old_fused.py", "exec"), old.__dict__)
    dsrc = show("src/apsq/kernels/dispatch.py")
    old_dispatch = types.ModuleType("old_dispatch"); sys.modules["old_dispatch"] = old_dispatch
    exec(compile(dsrc, "old_dispatch.py", "exec"), old_dispatch.__dict__)
    old.dispatch = old_dispatch
    torch.set_num_threads(1)
    def case(m, k, n, per_channel, op):
        g = torch.Generator().manual_seed(0)
        sx, sw = torch.tensor(2.0**-4), torch.full((n,), 2.0**-7)
        if op == "linear":
            x = (torch.randint(-127, 128, (m, k), generator=g).float() * sx).requires_grad_()
            w = (torch.randint(-127, 128, (n, k), generator=g).float() * sw[:, None]).requires_grad_()
        else:
            x = (torch.randint(-127, 128, (4, 12, m, k), generator=g).float() * sx).requires_grad_()
            w = (torch.randint(-127, 128, (4, 12, k, n), generator=g).float() * 2.0**-7).requires_grad_()
            sw = torch.tensor(2.0**-7)
        nt = -(-k // 32)
        s = torch.full((nt, n) if per_channel else (nt,), 2.0**4).requires_grad_()
        return x, w, s, sx, sw
    def step(mod, op, x, w, s, sx, sw):
        if op == "linear":
            y = mod.linear_psum(x, w, s, 32, mode="apsq", gs=2, x_step=sx, w_step=sw)
        else:
            y = mod.matmul_psum(x, w, s, 32, mode="apsq", gs=2, a_step=sx, b_step=sw)
        y.sum().backward()
        return y
    for op, m, k, n, pc, reps in (("linear", 512, 768, 3072, False, 5), ("linear", 512, 768, 3072, True, 5),
                                  ("linear", 1, 768, 768, False, 200), ("matmul", 64, 64, 64, False, 30),
                                  ("matmul", 64, 64, 64, True, 30)):
        args = case(m, k, n, pc, op)
        ya = step(old, op, *args); ga = [t.grad.clone() for t in args[:3]]
        for t in args[:3]: t.grad = None
        yb = step(new, op, *args); gb = [t.grad.clone() for t in args[:3]]
        same = torch.equal(ya, yb) and all(torch.equal(a, b) for a, b in zip(ga, gb))
        times = {"old": [], "new": []}
        for r in range(reps):
            for name, mod in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
                for t in args[:3]: t.grad = None
                c0 = time.process_time(); step(mod, op, *args); times[name].append(time.process_time() - c0)
        mo, mn = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"{op} M={m} K={k} N={n} per_channel={pc}: identical={same} old {mo*1e3:.2f} ms new {mn*1e3:.2f} ms ratio {mn/mo:.3f}")


if __name__ == "__main__":
    main()
