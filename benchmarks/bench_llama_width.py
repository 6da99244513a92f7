"""Two LLaMA decoder layers at LLaMA2-7B's true width, APSQ QAT under FSDP2 (issue 22 item 2).

Hidden 4096, FFN 11008, 32 heads (MHA), RMSNorm, rotary, eager attention with both attention
matmuls (QK^T, AV) quantized; every Linear of the decoder layers quantized (APSQ gs=2, tile 32,
W8A8, 8-bit PSUMs), embeddings and ``lm_head`` in full precision (vocabulary cut to ``--vocab``).
Per rank: build (seeded, identical on every rank), ``quantize_``, ``fully_shard`` (each decoder layer,
then the root), ``calibrate`` after sharding (the sharding-aware path of :mod:`apsq.nn.sharding`), and
``--steps`` QAT steps of the library's optimizer rule (:func:`apsq.train.make_optimizer`), each
rank on its own rows of the global batch.

Memory per rank: peak resident set size (``ru_maxrss``, the whole process: Python, torch, the
transient unsharded layer of FSDP2, activations, calibration samples) after each phase, and the bytes
of this rank's shards of parameters, gradients and AdamW state.

    OMP_NUM_THREADS=1 nice python benchmarks/bench_llama_width.py --ranks 2 --json results/llm_width/bench_llama_width.json

Gloo on CPU processes (``--device cuda`` with NCCL, one GPU per rank, where there are GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _local_bytes(tensors) -> int:
    from apsq.nn.sharding import is_sharded

    total = 0
    for t in tensors:
        if t is None:
            continue
        loc = t.to_local() if is_sharded(t) else t
        total += loc.numel() * loc.element_size()
    return total


def build(args: argparse.Namespace):
    import apsq
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                      max_position_embeddings=max(128, args.seq), tie_word_embeddings=False,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    apsq.quantize_(model, apsq.APSQConfig(mode="apsq", gs=2, tile=32, attention_matmuls=True, exclude=("lm_head",)))
    return model


def _worker(rank: int, args: argparse.Namespace, store: str, out: str) -> None:
    torch.set_num_threads(args.threads)
    dev = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if args.device == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", init_method=f"file://{store}", rank=rank,
                            world_size=args.ranks)
    try:
        import apsq
        from apsq.train.config import ScheduleConfig
        from apsq.train.optim import clip_grad_norms_, make_optimizer
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        phases: dict[str, dict] = {}

        def mark(name: str, t0: float) -> None:
            rec = {"seconds": round(time.time() - t0, 2), "rss_mib": round(_rss_mib(), 1),
                   "peak_rss_mib": round(_peak_mib(), 1)}
            if dev.type == "cuda":
                rec["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
            phases[name] = rec
            print(f"rank {rank}: {name} {rec}", flush=True)

        t0 = time.time()
        model = build(args).to(dev)
        n_quant = len(model.apsq_report.quantized)
        n_params = sum(p.numel() for p in model.parameters())
        mark("build_and_quantize", t0)
        t0 = time.time()
        mesh = init_device_mesh(dev.type, (args.ranks,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        mark("fully_shard", t0)
        g = torch.Generator().manual_seed(1)
        calib = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
        t0 = time.time()
        apsq.calibrate(model, [{"input_ids": calib.to(dev)}], max_rows=args.calib_rows)
        mark("calibrate", t0)
        opt = make_optimizer(model, ScheduleConfig(lr=1e-5, scale_lr=0.2, steps=args.steps))
        losses = []
        for step in range(args.steps):
            t0 = time.time()
            ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)[rank::args.ranks].to(dev)
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            clip_grad_norms_(opt.param_groups)
            opt.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append(round(float(total) / args.ranks, 6))
            mark(f"qat_step_{step + 1}", t0)
        params = list(model.parameters())
        opt_state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        steps = [p for n, p in model.named_parameters() if n.endswith(("log2_scale", "log2_scales"))]
        rec = {"rank": rank, "phases": phases, "losses": losses,
               "shard_bytes": {"parameters": _local_bytes(params), "gradients": _local_bytes(p.grad for p in params),
                               "optimizer_state": _local_bytes(opt_state), "step_parameters": _local_bytes(steps)},
               "quantized_layers": n_quant, "parameters": n_params}
        every: list = [None] * args.ranks
        dist.all_gather_object(every, rec)
        if rank == 0:
            Path(out).write_text(json.dumps(every))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=512, help="vocabulary (LLaMA2: 32000; cut: the decoder is measured)")
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2, help="global batch (sentences), split over the ranks")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--calib-rows", type=int, default=64, help="calibration rows kept per layer (calibrate max_rows)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        mp.spawn(_worker, args=(args, str(Path(d) / "store"), str(Path(d) / "out.json")), nprocs=args.ranks, join=True)
        ranks = json.loads((Path(d) / "out.json").read_text())
    res = {"command": "python benchmarks/bench_llama_width.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "model": {"hidden": args.hidden, "ffn": args.ffn, "heads": args.heads, "layers": args.layers,
                     "vocab": args.vocab, "quant": "apsq gs=2 tile 32 W8A8 psum 8 bit, attention matmuls, lm_head fp"},
           "wall_seconds": round(time.time() - t0, 1), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "torch": torch.__version__, "ranks": ranks}
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return res


if __name__ == "__main__":
    main()
