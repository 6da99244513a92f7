"""Segmentation on the offline stand-in ``digit-scenes``: Segformer-B0 and EfficientViT-B1, every PSUM variant.

For each model and seed: the FP32 training from random initialisation (``configs/train_<model>_digit_scenes.yaml``
without its ``apsq`` section), then QAT + KD of W8A8 (INT32 PSUMs), psq and APSQ gs = 1..4 from it, each
trained by :func:`apsq.eval.sweep.run_variant` (the text sweep's runner: finished runs are reused,
interrupted ones resumed) in its own process, at most ``--workers`` at a time, one thread each.
``--collect`` writes ``results/segmentation/segmentation.json`` + ``.png`` from whatever has finished:
test mIoU per variant (mean, std, 95 % t-interval over seeds, per seed), the gaps to W8A8 / FP32
paired by seed, the gs chosen on the validation split (``selection_accuracy``) with its test mIoU, and
the energy reduction of the same traced model (:func:`apsq.eval.sweep.energy_reductions`).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python results/segmentation/run_segmentation.py --seeds 0 1 2 --workers 2
    python results/segmentation/run_segmentation.py --seeds 0 1 2 --collect
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from apsq.train.config import TrainConfig

MODELS = {"segformer-b0": "configs/train_segformer_digit_scenes.yaml",
          "efficientvit-b1": "configs/train_efficientvit_digit_scenes.yaml"}
VARIANTS = {"w8a8": ("none", 1), "apsq_gs2": ("apsq", 2), "apsq_gs4": ("apsq", 4), "apsq_gs1": ("apsq", 1),
            "apsq_gs3": ("apsq", 3), "psq": ("psq", 1)}
"""Variant -> (PSUM mode, gs), in run priority order."""
ORDER = ("fp32", "w8a8", "psq", "apsq_gs1", "apsq_gs2", "apsq_gs3", "apsq_gs4")
EVAL_LIMIT: int | None = None
"""Scenes each QAT run evaluates on the test and the validation split (None: all 256 of each); each run
re-measures its FP32 teacher on the same scenes (``fp32_accuracy`` in its result), the reference of its gaps."""
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Two-sided 95 % Student-t quantiles by degrees of freedom."""


FP32_SEED: list[int] = []
"""``--fp32-seed 0``: every seed's QAT starts from seed 0's FP32 model (the seeds then differ in QAT only:
calibration batches, batch order, crops); by default each seed trains its own."""


def fp32_of(seed: int) -> int:
    return FP32_SEED[0] if FP32_SEED else seed


def run_dir(root: Path, model: str, seed: int, variant: str) -> Path:
    return root / model / f"seed{seed}" / variant


def config_of(model: str, seed: int, variant: str, root: Path) -> TrainConfig:
    """The training config of one job (FP32: the base without ``apsq``, ``qat``, ``distill``)."""
    from apsq.train.config import parse_config

    base = yaml.safe_load(Path(MODELS[model]).read_text())
    base["seed"] = seed
    if variant == "fp32":
        return parse_config({k: v for k, v in base.items() if k not in ("apsq", "qat", "distill")}, MODELS[model])
    mode, gs = VARIANTS[variant]
    base["data"] = {**base["data"], "eval_limit": EVAL_LIMIT}
    base["finetune"] = {"steps": 0, "init": str(run_dir(root, model, fp32_of(seed), "fp32") / "fp32.safetensors")}
    return parse_config(base, MODELS[model]).with_apsq(mode=mode, gs=gs)


def done(root: Path, model: str, seed: int, variant: str) -> bool:
    return (run_dir(root, model, seed, variant) / "result.json").exists()


def worker(model: str, seeds: list[int], root: Path, deadline: float | None) -> None:
    """All QAT runs of one model in this process (the generated scenes are made once), variant-major
    over the seeds, so that a deadline leaves whole variants with every seed; FP32 first if missing."""
    from apsq.eval.sweep import run_variant

    order = [(model, s, "fp32") for s in seeds if fp32_of(s) == s] + [(model, s, v) for v in VARIANTS for s in seeds]
    for j in order:
        if done(root, *j):
            continue
        if deadline is not None and time.time() >= deadline:
            print(f"{time.strftime('%H:%M:%S')} deadline: {j} not started", flush=True)
            continue
        cfg = config_of(*j, root)
        cfg_path = root / "configs" / f"{j[0]}_seed{j[1]}_{j[2]}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        print(f"{time.strftime('%H:%M:%S')} start {j}", flush=True)
        res = run_variant(cfg, run_dir(root, *j), progress=False)
        print(f"{time.strftime('%H:%M:%S')} done {j}: test mIoU {res.get('accuracy', res.get('fp32_accuracy'))}, "
              f"{res.get('seconds')} s", flush=True)


def run_all(models: list[str], seeds: list[int], root: Path, workers: int, deadline: str | None) -> None:
    """One :func:`worker` process per model, at most ``workers`` at a time, one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    (root / "logs").mkdir(parents=True, exist_ok=True)
    todo, running = list(models), []
    while todo or running:
        running = [p for p in running if p.poll() is None]
        while todo and len(running) < workers:
            m = todo.pop(0)
            cmd = [sys.executable, __file__, "--worker", m, "--seeds", *map(str, seeds), "--root", str(root)]
            cmd += (["--fp32-seed", str(FP32_SEED[0])] if FP32_SEED else []) + (["--deadline", deadline] if deadline else [])
            with open(root / "logs" / f"{m}.log", "a") as log:
                running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            print(f"{time.strftime('%H:%M:%S')} start {' '.join(cmd)}", flush=True)
        time.sleep(10)


def summary(per_seed: dict[str, float]) -> dict:
    vals = list(per_seed.values())
    n = len(vals)
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if n > 1 else None
    half = T95[n - 1] * std / n ** 0.5 if std is not None else None
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half] if half is not None else None, "n": n,
            "per_seed": per_seed}


def paired(a: dict[str, float], ref: dict[str, float]) -> dict | None:
    """``a - ref`` in mIoU points (x 100) per common seed, mean and 95 % t-interval."""
    gaps = [100 * (a[k] - ref[k]) for k in a if k in ref]
    if not gaps:
        return None
    out = {"per_seed": [round(g, 2) for g in gaps], "mean": round(statistics.fmean(gaps), 2), "n": len(gaps)}
    if len(gaps) > 1:
        half = T95[len(gaps) - 1] * statistics.stdev(gaps) / len(gaps) ** 0.5
        out["ci95"] = [round(out["mean"] - half, 2), round(out["mean"] + half, 2)]
    return out


def collect_model(model: str, seeds: list[int], root: Path) -> dict:
    test: dict[str, dict[str, float]] = {}
    val: dict[str, dict[str, float]] = {}
    pix: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    fp32_ref: dict[str, float] = {}
    fp32_pix: dict[str, float] = {}
    init = None
    for s in seeds:
        for v in ORDER:
            f = run_dir(root, model, s, v) / "result.json"
            if not f.exists():
                continue
            r = json.loads(f.read_text())
            key = str(s)
            if v != "fp32":
                fp32_ref[key] = r["fp32_accuracy"]  # the teacher on the same scenes
                fp32_pix[key] = r["fp32_pixel_accuracy"]
            if v == "fp32" and fp32_of(s) != s:
                continue
            test.setdefault(v, {})[key] = r["fp32_accuracy"] if v == "fp32" else r["accuracy"]
            pix.setdefault(v, {})[key] = r["fp32_pixel_accuracy"] if v == "fp32" else r["pixel_accuracy"]
            if r.get("selection_accuracy") is not None:
                val.setdefault(v, {})[key] = r["selection_accuracy"]
            seconds.setdefault(v, {})[key] = r.get("seconds")
            init = init or r.get("model_init")
    full_fp32 = test.get("fp32", {})
    if fp32_ref:  # the FP32 row on the QAT runs' scenes (each FP32 model once)
        test["fp32"] = {k: v for k, v in fp32_ref.items() if fp32_of(int(k)) == int(k)}
        pix["fp32"] = {k: v for k, v in fp32_pix.items() if fp32_of(int(k)) == int(k)}
    table = {v: summary(test[v]) for v in ORDER if test.get(v)}
    out: dict = {"model": model, "model_init": init, "test_miou": table,
                 "fp32_teacher_test_miou_on_qat_scenes": fp32_ref,
                 "fp32_run_test_miou_all_256_scenes": full_fp32,
                 "validation_miou": {v: summary(val[v]) for v in ORDER if v in val},
                 "test_pixel_accuracy": {v: summary(pix[v]) for v in ORDER if pix.get(v)},
                 "run_seconds": seconds}
    refs = {"w8a8": test.get("w8a8", {}), "fp32": fp32_ref}  # a seed's FP32: its teacher on the QAT runs' scenes
    for ref, vals in refs.items():
        out[f"vs_{ref}_pp"] = {v: paired(test[v], vals) for v in ORDER if v in test and vals and v not in (ref, "fp32")}
    gs = [f"apsq_gs{g}" for g in (1, 2, 3, 4) if f"apsq_gs{g}" in val]
    if gs:  # the honest choice: best mean validation mIoU among the gs every seed has
        full = [v for v in gs if len(val[v]) == max(len(val[g]) for g in gs)]
        chosen = max(full, key=lambda v: statistics.fmean(val[v].values()))
        by_test = max(full, key=lambda v: statistics.fmean(test[v].values()))
        out["best_gs"] = {"rule": "highest mean validation mIoU (validation: scenes of the held-out validation "
                                  "digits / photo rows); its test mIoU reported once",
                          "chosen_on_validation": chosen, "test_miou": table[chosen]["mean"],
                          "vs_w8a8_pp": out["vs_w8a8_pp"].get(chosen), "vs_fp32_pp": out["vs_fp32_pp"].get(chosen),
                          "best_on_test_for_contrast": by_test}
    return out


def collect(models: list[str], seeds: list[int], root: Path, out: Path, command: str) -> dict:
    from apsq.data.segmentation import DIGIT_SCENES_ROWS
    from apsq.eval.sweep import energy_reductions
    from apsq.train.config import parse_config

    res: dict = {"dataset": "digit-scenes (offline stand-in, docs/segmentation.md): 32 x 32, 12 classes, digits "
                            "18..25 px in contrasting ink, "
                            "2,000 train / 256 validation / 256 test scenes",
                 "metric": "mIoU over the 12 classes as mmsegmentation (areas summed over the set), x 1 (fraction)",
                 "qat_eval_scenes": EVAL_LIMIT or DIGIT_SCENES_ROWS["test"],
                 "seeds": seeds, "fp32_model_of_seed": {str(s): fp32_of(s) for s in seeds}, "models": {}}
    for m in models:
        base = yaml.safe_load(Path(MODELS[m]).read_text())
        r = collect_model(m, seeds, root)
        r["config"] = MODELS[m]
        r["finetune"], r["qat"] = base["finetune"], base["qat"]
        try:
            r["energy_reduction"] = energy_reductions(parse_config(base), (1, 2, 3, 4))
        except Exception as exc:  # the accuracy table stands without it
            r["energy_reduction"] = {"error": f"{type(exc).__name__}: {exc}"}
        res["models"][m] = r
    if not any(r["test_miou"] for r in res["models"].values()):
        raise SystemExit(f"no finished run under {root} (models {', '.join(models)}, seeds "
                         f"{' '.join(map(str, seeds))}): {out} is left as it is")
    res["command"] = command
    res["machine"] = (f"{platform.machine()} CPU, {os.cpu_count()} cores, one thread per run, two runs at a time; "
                      "torch " + __import__("torch").__version__)
    out.write_text(json.dumps(res, indent=1) + "\n")
    plot(res, out.with_suffix(".png"))
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(res["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), dpi=120, squeeze=False)
    for ax, m in zip(axes[0], models):
        t = res["models"][m]["test_miou"]
        names = [v for v in ORDER if v in t]
        for i, v in enumerate(names):
            row = t[v]
            ax.scatter([i] * row["n"], [100 * x for x in row["per_seed"].values()], color="C0", s=14, alpha=0.6)
            err = None if row["ci95"] is None else [[100 * (row["mean"] - row["ci95"][0])], [100 * (row["ci95"][1] - row["mean"])]]
            ax.errorbar([i], [100 * row["mean"]], yerr=err, fmt="_", color="C3", ms=18, capsize=4)
        chosen = res["models"][m].get("best_gs", {}).get("chosen_on_validation")
        if chosen in names:
            ax.annotate("gs chosen\non validation", (names.index(chosen), 100 * t[chosen]["mean"]), fontsize=7,
                        xytext=(0, -28), textcoords="offset points", ha="center")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_ylabel(f"test mIoU (%), {res['qat_eval_scenes']} scenes")
        ax.set_title(f"{m} on digit-scenes (dots: seeds; bar: mean, 95 % t-interval)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("runs/segmentation"))
    ap.add_argument("--deadline", default=None, help="HH:MM (UTC): start no run after it")
    ap.add_argument("--fp32-seed", type=int, default=None, help="every seed's QAT starts from this seed's FP32 model")
    ap.add_argument("--collect", action="store_true", help="only write the JSON / PNG from finished runs")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=Path("results/segmentation/segmentation.json"))
    a = ap.parse_args()
    if a.fp32_seed is not None:
        FP32_SEED.append(a.fp32_seed)
    deadline = None
    if a.deadline:
        h, m = map(int, a.deadline.split(":"))
        now = time.gmtime()
        deadline = time.time() + ((h * 60 + m) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec
    if a.worker:
        worker(a.worker, a.seeds, a.root, deadline)
        return
    if not a.collect:
        run_all(a.models, a.seeds, a.root, a.workers, a.deadline)
    cmd = (f"python results/segmentation/run_segmentation.py --seeds {' '.join(map(str, a.seeds))} "
           f"--models {' '.join(a.models)} --root {a.root}"
           + (f" --fp32-seed {a.fp32_seed}" if a.fp32_seed is not None else ""))
    res = collect(a.models, a.seeds, a.root, a.json, cmd)
    print(json.dumps({m: r.get("best_gs") for m, r in res["models"].items()}, indent=1))


if __name__ == "__main__":
    main()
