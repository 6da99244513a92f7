"""Reproducibility probe: the first N QAT losses of a MiniLM config under the current settings.

Runs ``apsq train`` on the config with the FP32 stage skipped (the pretrained all-MiniLM-L6-v2 with its
seeded fresh head is the teacher: no fine-tune needed), stops after ``--steps`` QAT steps and prints /
writes the logged losses together with what decides float rounding on a CPU: torch's CPU capability
(``ATEN_CPU_CAPABILITY``), the oneDNN / MKL ISA limits, the integer kernel's micro-kernel, threads, the
torch version and the git commit. Two settings that print different losses will not reproduce each
other's 200-step runs (the differences grow; see ``README.md``). Works on older commits too (it only
uses ``apsq.train.loop.train`` and its ``metrics.jsonl``).

    OMP_NUM_THREADS=1 python results/sentiment_minilm/repro_probe.py --config configs/train_minilm_w8a8.yaml
    python results/sentiment_minilm/repro_probe.py --check results/sentiment_minilm/repro_reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


class _Stop(Exception):
    pass


def environment() -> dict:
    """What decides the float rounding of a CPU run."""
    import torch

    out = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads(),
           **{k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                             "OMP_NUM_THREADS", "APSQ_KERNELS")}}
    try:
        from apsq.kernels import int_gemm

        out["int_kernel"] = int_gemm.isa()
    except Exception as exc:  # older commits / no compiler
        out["int_kernel"] = f"unknown ({type(exc).__name__})"
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    out["cpu"] = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("model name")), "?")
    out["cpu_avx512"] = " avx512f" in cpu
    try:  # the commit of the apsq that runs (PYTHONPATH), not of this file
        import apsq

        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(apsq.__file__).parent).stdout.strip() or os.environ.get("APSQ_COMMIT", "?")
    except OSError:
        out["commit"] = "?"
    return out


def probe(config: Path, steps: int, threads: int) -> dict:
    from apsq.train.config import parse_config
    from apsq.train.loop import train

    data = yaml.safe_load(config.read_text())
    data["finetune"] = {"steps": 0}
    data["eval"] = {"batch_size": 64}  # evaluation settings change no trained weight (older commits lack some keys)
    data["data"] = {**data.get("data", {}), "eval_limit": 8}
    data["threads"] = threads
    data["save_every"] = steps  # a checkpoint at the last probed step: its weights are hashed
    cfg = parse_config(data)

    def hook(stage: str, step: int) -> None:
        if stage == "qat" and step >= steps:
            raise _Stop

    with tempfile.TemporaryDirectory() as tmp:
        try:
            train(cfg, Path(tmp) / "run", progress=False, on_step=hook)
        except _Stop:
            pass
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        weights = weights_hash(Path(tmp) / "run" / "checkpoint.safetensors")
    losses = [x["loss"] for x in lines if x.get("stage") == "qat" and "loss" in x][:steps]
    return {"config": str(config), "steps": steps, "losses": losses, "weights_sha256": weights,
            "environment": environment()}


def weights_hash(ckpt: Path) -> str:
    """SHA-256 of every model tensor of a checkpoint (names and bytes, sorted): equal only if bit-identical."""
    import hashlib

    from apsq.train.checkpoint import read_tensors

    tensors, _ = read_tensors(ckpt)
    h = hashlib.sha256()
    for name in sorted(k for k in tensors if k.startswith("model/")):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/train_minilm_w8a8.yaml"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="append the probe to this JSON list")
    ap.add_argument("--check", type=Path, default=None,
                    help="re-run every probe of this reference file under the current settings; exit 1 on a difference")
    a = ap.parse_args()
    if a.check:
        ref = json.loads(a.check.read_text())
        bad = 0
        for r in ref["reference"]:
            got = probe(Path(r["config"]), r["steps"], r["environment"]["threads"])
            same = got["losses"] == r["losses"] and got["weights_sha256"] == r["weights_sha256"]
            bad += not same
            print(f"{r['config']}: {'identical' if same else 'DIFFERENT'} first {r['steps']} QAT losses"
                  + ("" if same else f"\n  reference {r['losses']}\n  now       {got['losses']}"))
        if bad:
            print("the runs of run.sh will not reproduce the committed JSON on this machine / settings: "
                  f"reference environment {ref['reference'][0]['environment']}, now {environment()}")
        sys.exit(1 if bad else 0)
    res = probe(a.config, a.steps, a.threads)
    print(json.dumps(res))
    if a.json:
        old = json.loads(a.json.read_text()) if a.json.exists() else []
        a.json.write_text(json.dumps([*old, res], indent=1) + "\n")


if __name__ == "__main__":
    main()
