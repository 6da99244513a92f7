"""The training loop: QAT + KD on a tiny BERT, exact resume after a crash, bad checkpoints, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from apsq.errors import APSQError
from apsq.train.config import parse_config
from apsq.train.batches import global_batch
from apsq.train.loop import train
from apsq.train.losses import distill_loss
from apsq.train.optim import lr_factor, param_groups


class Crash(RuntimeError):
    pass


def _crash_at(stage, step):
    def hook(s, k):
        if (s, k) == (stage, step):
            raise Crash(f"injected crash after {s} step {k}")
    return hook


def _metrics(path):
    return [{k: v for k, v in json.loads(line).items() if k != "sec"} for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, standin, make_config):
    out = tmp_path_factory.mktemp("ref")
    res = train(parse_config(make_config(standin)), out, progress=False)
    return out, res


def test_run_writes_results_and_trains_step_sizes(reference_run, standin):
    out, res = reference_run
    assert {"checkpoint.safetensors", "fp32.safetensors", "metrics.jsonl", "result.json", "config.json"} <= {
        p.name for p in out.iterdir()}
    saved = json.loads((out / "result.json").read_text())
    assert saved["qat_steps"] == 6 and saved["apsq"]["gs"] == 2 and saved["processes"] == 1
    assert 0.0 <= saved["accuracy"] <= 1.0 and 0.0 <= saved["fp32_accuracy"] <= 1.0
    recs = _metrics(out / "metrics.jsonl")
    qat = [r for r in recs if r["stage"] == "qat" and "loss" in r]
    assert [r["step"] for r in qat] == list(range(1, 7))
    assert all({"kd", "ce", "hidden"} <= set(r) for r in qat)
    model = res["model"]
    # the quantized model: classifier excluded, everything else swapped; step sizes moved off their
    # calibrated integers by the step-size learning rate
    from apsq.nn.layers import QuantLinear

    assert type(model.classifier) is torch.nn.Linear
    assert isinstance(model.bert.encoder.layer[0].intermediate.dense, QuantLinear)
    scales = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith("log2_scales")])
    assert (scales - scales.round()).abs().max() > 0


def test_run_exports_the_trained_model_in_hugging_face_format(reference_run):
    """Issue 22 item 3: `apsq train`'s final model reloads quantized from `<output>/hf` (from_pretrained),
    trained steps included, outputs bit-identical; its tokenizer is beside it."""
    import apsq.integrations.transformers  # noqa: F401  (registers the "apsq" quantization method)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, res = reference_run
    assert json.loads((out / "result.json").read_text())["hf_export"] == "hf"
    loaded = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    tok = AutoTokenizer.from_pretrained(out / "hf")
    batch = tok(["the movie is good and warm", "the movie is dull"], return_tensors="pt", padding=True)
    trained = res["model"].eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, trained(**batch).logits)
    a, b = trained.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("crash", [("finetune", 3), ("qat", 3), ("qat", 6)])
def test_resume_after_crash_equals_uninterrupted(tmp_path, standin, crash, make_config):
    # the uninterrupted run is made here, beside the interrupted one, so that both see the same
    # process state (kernel builds, thread count) whatever other tests ran before in this worker
    cfg = parse_config(make_config(standin))
    ref_out = tmp_path / "ref"
    ref = train(cfg, ref_out, progress=False)
    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(cfg, run, progress=False, on_step=_crash_at(*crash))
    res = train(cfg, run, resume=True, progress=False)
    a, b = ref["model"].state_dict(), res["model"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert res["accuracy"] == ref["accuracy"] and res["fp32_accuracy"] == ref["fp32_accuracy"]
    assert _metrics(run / "metrics.jsonl") == _metrics(ref_out / "metrics.jsonl")


def test_bad_resume_and_overwrite_are_refused(tmp_path, standin, reference_run, make_config):
    ref_out, _ = reference_run
    cfg = parse_config(make_config(standin))
    ck = ref_out / "checkpoint.safetensors"
    before = ck.read_bytes()
    with pytest.raises(APSQError, match="already holds a run"):
        train(cfg, ref_out, progress=False)
    other = parse_config(make_config(standin, apsq={"gs": 3}))
    with pytest.raises(APSQError, match="different config .*apsq"):
        train(other, ref_out, resume=True, progress=False)
    with pytest.raises(APSQError, match="no checkpoint"):
        train(cfg, tmp_path / "empty", resume=True, progress=False)
    assert ck.read_bytes() == before
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.safetensors").write_bytes(before[:100])
    with pytest.raises(APSQError, match="corrupt"):
        train(cfg, bad, resume=True, progress=False)
    assert (bad / "checkpoint.safetensors").read_bytes() == before[:100]
    assert sorted(p.name for p in bad.iterdir()) == ["checkpoint.safetensors"]


def test_schedule_pieces():
    a = global_batch(10, 4, 0, 0, "qat") + global_batch(10, 4, 1, 0, "qat") + global_batch(10, 4, 2, 0, "qat")
    assert sorted(a[:10]) == list(range(10))  # one epoch covers every row once
    assert a == global_batch(10, 12, 0, 0, "qat")  # batches are slices of one stream
    assert global_batch(10, 4, 0, 1, "qat") != global_batch(10, 4, 0, 0, "qat")
    s = parse_config({"qat": {"steps": 10, "warmup": 0.2}}).qat
    assert [round(lr_factor(i, s), 4) for i in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]
    m = torch.nn.Linear(3, 2)
    m.log2_scales = torch.nn.Parameter(torch.zeros(2))
    groups = {g["name"]: g for g in param_groups(m, parse_config({"qat": {"scale_lr": 0.5}}).qat)}
    assert groups["step_sizes"]["base_lr"] == 0.5 and groups["step_sizes"]["params"] == [m.log2_scales]
    assert groups["weights"]["params"] == [m.weight] and groups["no_decay"]["params"] == [m.bias]


def test_distill_loss_formula():
    cfg = parse_config({"distill": {"temperature": 3.0, "kd_weight": 2.0, "ce_weight": 0.5}})
    s = torch.tensor([[1.0, -1.0], [0.5, 0.2]])
    y = torch.tensor([0, 1])
    same = distill_loss(s, s.clone(), y, cfg)
    assert float(same["kd"]) == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[-1.0, 2.0], [0.0, 0.0]])
    out = distill_loss(s, t, y, cfg)
    ps, pt = torch.softmax(s / 3, -1), torch.softmax(t / 3, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean() * 9
    ce = torch.nn.functional.cross_entropy(s, y)
    assert float(out["kd"]) == pytest.approx(float(kl), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(2 * kl + 0.5 * ce), rel=1e-5)


def test_cli_reports_bad_config(tmp_path):
    from typer.testing import CliRunner

    from apsq.cli import app

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"name": "minilm"}, "data": {"name": "rt-sentences"}, "qat": {"stepz": 1}}))
    r = CliRunner().invoke(app, ["train", "--config", str(p), "--output", str(tmp_path / "o")])
    assert r.exit_code == 1 and "unknown key 'qat.stepz'" in r.output
    assert not (tmp_path / "o").exists()


def test_missing_fp32_init_names_the_command_and_leaves_nothing(tmp_path, monkeypatch, standin, make_config):
    """README: `apsq train --config configs/train_minilm_apsq_gs2.yaml` before the FP32 run (issue 17 item 2)."""
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(make_config(standin, finetune={"steps": 0, "init": "runs/train_minilm_fp32/fp32.safetensors"}))
    with pytest.raises(APSQError, match=r"apsq train --config configs/train_minilm_fp32.yaml` first"):
        train(cfg, tmp_path / "runs" / "train_minilm_apsq_gs2", progress=False)
    assert not (tmp_path / "runs").exists()
    # a start that fails later (after the folder was made) leaves nothing behind either
    bad = parse_config(make_config(standin, data={"path": str(tmp_path / "missing.txt")}))
    with pytest.raises((APSQError, OSError)):
        train(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_configs_point_at_the_fp32_configs_default_output():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    fp32_out = Path("runs") / "train_minilm_fp32" / "fp32.safetensors"  # `apsq train` default: runs/<config stem>
    for f in sorted(root.glob("train_minilm_*.yaml")):
        data = yaml.safe_load(f.read_text())
        if data.get("apsq") is not None:
            assert data["finetune"]["init"] == str(fp32_out), f.name


def test_two_processes_under_accelerate_launch(tmp_path, standin, make_config):
    cfg = make_config(standin, finetune={"steps": 3}, qat={"steps": 3}, threads=1)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "apsq.cli", "train", "--config", str(p), "--output", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["processes"] == 2
    assert res["replica_max_abs_diff"] == 0.0  # both replicas hold identical weights
    assert 0.0 <= res["accuracy"] <= 1.0
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 1, 2, 3]  # logged once (main process), not twice
