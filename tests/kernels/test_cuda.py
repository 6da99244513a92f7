"""Every command device-correct (issue 12 item 2): the eval / tune / beyond / train paths on CUDA, and
a meta-check of the same paths that always runs.

- ``cuda``-marked tests run wherever a GPU is present (skipped otherwise): calibrate + 3 QAT steps of
  ``apsq train`` on a digits-cnn config (the CLI), and the evaluation paths (task metrics, tune-gs
  profiling, A2Q QAT, the vision runner, the lm-eval model loader) with the model on the GPU.
- The CPU meta-check proves the batches follow the *model*: the same functions get a model converted to
  float64 while the data stay float32 on the CPU (any path that forgot :func:`apsq.device.to_device`
  fails with a dtype mismatch), and spies on ``to_device`` record where the training loop sends them.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

import apsq
from apsq.device import module_device, resolve_device, to_device
from apsq.errors import APSQError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GS = (1, 2)


def _digits_cfg(**over) -> dict:
    cfg = {"seed": 0, "model": {"name": "digits-cnn", "num_labels": 10},
           "data": {"name": "digits", "eval_limit": 64},
           "finetune": {"steps": 3, "batch_size": 32, "lr": 2e-3},
           "apsq": {"mode": "apsq", "gs": 2, "tile": 16, "psum_bits": 8, "exclude": ["classifier"]},
           "qat": {"steps": 3, "batch_size": 32, "calib_batches": 2},
           "distill": {"temperature": 2.0, "ce_weight": 0.5},
           "eval": {"batch_size": 64}, "save_every": 100, "threads": 1}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def digits_setup_files(tmp_path_factory):
    """A digits config and an (untrained, seeded) FP32 checkpoint for :func:`apsq.eval.setup.load_setup`."""
    from apsq.train.checkpoint import atomic_save_tensors
    from apsq.train.models import DigitsCNN

    d = tmp_path_factory.mktemp("digits_dev")
    torch.manual_seed(0)
    m = DigitsCNN(10)
    atomic_save_tensors(d / "fp32.safetensors", {f"model/{k}": v for k, v in m.state_dict().items()})
    (d / "cfg.yaml").write_text(yaml.safe_dump(_digits_cfg()))
    return d


def _mlp_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 4)).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 96, generator=g) for _ in range(2)]
    xs = torch.randn(64, 96, generator=g)
    with torch.no_grad():
        ys = model(xs).argmax(-1)
    return model, calib, [(xs[:32], ys[:32]), (xs[32:], ys[32:])]


BASE = apsq.APSQConfig(tile=8, gs=2, mode="apsq")


# --- the meta-check: always runs ------------------------------------------------------------------

def test_resolve_device_names_the_parameter():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(APSQError, match=r"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"):
        resolve_device("gpu", "--device")
    if not torch.cuda.is_available():
        with pytest.raises(APSQError, match="no CUDA device"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("cmd", [["tune-gs"], ["beyond", "low-bit"], ["beyond", "a2q"]])
def test_study_commands_reject_a_bad_device(cmd, digits_setup_files):
    from typer.testing import CliRunner

    from apsq.cli import app

    d = digits_setup_files
    r = CliRunner().invoke(app, [*cmd, "--config", str(d / "cfg.yaml"), "--fp32", str(d / "fp32.safetensors"),
                                 "--device", "gpu"])
    assert r.exit_code != 0 and "--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'gpu'" in r.output, r.output


def test_eval_vision_rejects_a_bad_device():
    from typer.testing import CliRunner

    from apsq.cli import app

    r = CliRunner().invoke(app, ["eval", "vision", "--models", "efficientvit-b1", "--image-size", "64",
                                 "--device", "gpu"])
    assert r.exit_code != 0 and "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'gpu'" in r.output


def test_logits_on_follows_the_model_dtype_and_returns_cpu_float32(monkeypatch):
    from apsq.eval import metrics

    seen = []
    real = metrics.to_device

    def spy(batch, device, dtype=None):
        seen.append((torch.device(device), dtype))
        return real(batch, device, dtype)

    monkeypatch.setattr(metrics, "to_device", spy)
    model, _, batches = _mlp_data()
    model = model.double()  # the data stay float32: without to_device F.linear fails on the dtypes
    out = metrics.logits_on(model, batches)
    assert seen == [(torch.device("cpu"), torch.float64)] * 2
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (64, 4)
    m = metrics.metrics_of(out, out, torch.cat([y for _, y in batches]))
    assert m.kl == 0.0 and m.agreement == 1.0


def test_profile_gs_runs_a_float64_model_on_float32_batches():
    from apsq.tune.profile import profile_gs

    model, calib, batches = _mlp_data()
    p32 = profile_gs(model, BASE, GS, calib, batches)
    p64 = profile_gs(model.double(), BASE, GS, calib, batches)
    assert p64.fp_logits.dtype == torch.float32 and p64.labels.device.type == "cpu"
    assert next(p64.model.parameters()).dtype == torch.float64
    assert set(p64.stats) == set(GS) and p64.layers == p32.layers
    for g in GS:  # same steps from the same data: the float64 run's metrics match the float32 one's
        assert p64.uniform[g].accuracy == pytest.approx(p32.uniform[g].accuracy, abs=1 / 64)
    p64.measure({n: 1 for n in p64.layers})


def _small_vision_models(monkeypatch):
    """The vision runner builds a seeded 2-conv BatchNorm net (5 classes) instead of the real models."""
    from apsq.eval import vision

    def small(name, seed=0):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 5, 1))
        return vision._Logits(net, hf=False)

    monkeypatch.setattr(vision, "build_vision_model", small)


def test_vision_runner_follows_device_and_dtype(monkeypatch):
    """The vision path (BatchNorm estimate, calibration, comparison) with a float64 model on the CPU."""
    from apsq.eval import vision

    _small_vision_models(monkeypatch)
    variants = (("w8a8", "none", 1), ("apsq_gs2", "apsq", 2))
    r32 = vision.vision_output_error("efficientvit-b1", 32, variants=variants, device="cpu")
    r64 = vision.vision_output_error("efficientvit-b1", 32, variants=variants, device="cpu", dtype=torch.float64)
    assert r64["device"] == "cpu"
    for k in r32["variants"]:
        assert 0 < r64["variants"][k]["rel_error"] < 2
        assert r64["variants"][k]["rel_error"] == pytest.approx(r32["variants"][k]["rel_error"], rel=0.05, abs=1e-3)
    with pytest.raises(APSQError, match="device"):
        vision.vision_output_error("efficientvit-b1", 32, variants=variants, device="tpu")


def test_setup_variants_and_a2q_follow_a_float64_model(digits_setup_files):
    """PTQ of APSQ and A2Q variants and the shared QAT+KD loop with the setup model in float64:
    float32 digit images reach it (and the float32 teacher) in each one's dtype."""
    pytest.importorskip("brevitas")
    from apsq.beyond.a2q import build_variant, fp32_accuracy, qat_kd
    from apsq.beyond.variants import run_variants
    from apsq.eval.setup import load_setup

    d = digits_setup_files
    s = load_setup(d / "cfg.yaml", d / "fp32.safetensors", device="cpu")
    assert module_device(s.model) == torch.device("cpu") and s.calib[0]["pixel_values"].dtype == torch.float32
    s.model.double()
    res = run_variants(s, {"apsq_gs2": {"mode": "apsq", "gs": 2, "tile": 16, "exclude": ["classifier"]}})
    assert 0.0 <= res["apsq_gs2"]["ptq"]["accuracy"] <= 1.0
    a2q = build_variant(s, {"kind": "a2q", "acc_bits": 16})
    weights = [m.weight for m in a2q.modules() if type(m).__module__.startswith("brevitas.nn")]
    assert weights and {w.dtype for w in weights} == {torch.float64}
    teacher = load_setup(d / "cfg.yaml", d / "fp32.safetensors", device="cpu").model  # float32 teacher
    qat_kd(a2q, teacher, s, steps=2)
    assert all(torch.isfinite(p).all() for p in a2q.parameters())
    assert 0.0 <= fp32_accuracy(s) <= 1.0


def test_train_loop_sends_every_batch_to_the_accelerators_device(tmp_path, monkeypatch):
    """`apsq train`'s loop: a spy on to_device sees every batch go to the run's device (batches moved by
    split_batch, teacher inputs by the loop itself)."""
    from apsq.train import batches, loop
    from apsq.train.config import parse_config

    seen = []
    real = loop.to_device

    def spy(batch, device, dtype=None):
        seen.append(torch.device(device))
        return real(batch, device, dtype)

    monkeypatch.setattr(loop, "to_device", spy)
    monkeypatch.setattr(batches, "to_device", spy)
    res = loop.train(parse_config(_digits_cfg()), tmp_path / "run", progress=False)
    dev = module_device(res["model"])
    assert len(seen) >= 6 and set(seen) == {dev}
    assert 0.0 <= res["accuracy"] <= 1.0


# --- on a GPU ------------------------------------------------------------------------------------

@CUDA
def test_cuda_apsq_train_cli_calibrate_and_three_qat_steps(tmp_path):
    from typer.testing import CliRunner

    from apsq.cli import app

    cfg = tmp_path / "digits.yaml"
    cfg.write_text(yaml.safe_dump(_digits_cfg()))
    r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--output", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["qat_steps"] == 3 and 0.0 <= res["accuracy"] <= 1.0
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in steps if x.get("stage") == "qat" and "loss" in x] == [1, 2, 3]


@CUDA
def test_cuda_train_function_keeps_the_model_on_the_gpu(tmp_path):
    from apsq.train.config import parse_config
    from apsq.train.loop import train

    res = train(parse_config(_digits_cfg()), tmp_path / "run", progress=False)
    assert module_device(res["model"]).type == "cuda"


@CUDA
def test_cuda_calibrate_cpu_batches_and_metrics_back_on_cpu():
    from apsq.eval.metrics import logits_on
    from apsq.tune.profile import profile_gs

    model, calib, batches = _mlp_data()
    cpu = profile_gs(model, BASE, GS, calib, batches)
    gpu = profile_gs(model.cuda(), BASE, GS, calib, batches)  # batches stay on the CPU
    assert module_device(gpu.model).type == "cuda"
    assert gpu.fp_logits.device.type == "cpu" and gpu.labels.device.type == "cpu"
    for g in GS:
        assert gpu.uniform[g].accuracy == pytest.approx(cpu.uniform[g].accuracy, abs=2 / 64)
    q = gpu.model
    assert logits_on(q, batches).device.type == "cpu"
    bf = apsq.quantize_(nn.Sequential(nn.Linear(96, 48)).cuda().to(torch.bfloat16), BASE)
    apsq.calibrate(bf, calib)  # float32 CPU batches: moved and cast
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = bf(to_device(calib[0], "cuda", torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


@CUDA
def test_cuda_autocast_layer_equals_float32():
    torch.manual_seed(0)
    m = apsq.quantize_(nn.Sequential(nn.Linear(128, 64)).cuda(), apsq.APSQConfig(mode="apsq", gs=2, tile=16))
    x = torch.randn(32, 128, device="cuda")
    apsq.calibrate(m, [x])
    with torch.no_grad():
        y = m(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ya = m(x)
    assert torch.equal(ya.float(), y)


@CUDA
def test_cuda_setup_variants_and_a2q(digits_setup_files):
    pytest.importorskip("brevitas")
    from apsq.beyond.a2q import build_variant, qat_kd
    from apsq.beyond.variants import run_variants
    from apsq.eval.setup import load_setup

    d = digits_setup_files
    s = load_setup(d / "cfg.yaml", d / "fp32.safetensors", device="cuda")
    assert module_device(s.model).type == "cuda"
    res = run_variants(s, {"apsq_gs2": {"mode": "apsq", "gs": 2, "tile": 16, "exclude": ["classifier"]}})
    assert 0.0 <= res["apsq_gs2"]["ptq"]["accuracy"] <= 1.0
    a2q = build_variant(s, {"kind": "a2q", "acc_bits": 16})
    weights = [m.weight for m in a2q.modules() if type(m).__module__.startswith("brevitas.nn")]
    assert weights and {w.device.type for w in weights} == {"cuda"}
    qat_kd(a2q, s.model, s, steps=2)


@CUDA
def test_cuda_vision_runner(monkeypatch):
    from apsq.eval import vision

    _small_vision_models(monkeypatch)
    r = vision.vision_output_error("efficientvit-b1", 32, variants=(("apsq_gs2", "apsq", 2),), device="cuda")
    assert r["device"] == "cuda" and 0 < r["variants"]["apsq_gs2"]["rel_error"] < 2


@CUDA
def test_cuda_lm_eval_model_loader(tmp_path):
    pytest.importorskip("lm_eval")
    from apsq.eval.llm import LLMSettings, build_llama, train_tokenizer
    from apsq.eval.lm_eval_adapter import quantized_causal_lm

    sents = [f"the {a} film was {b}" for a in ("new", "old", "long") for b in ("good", "bad", "fine")]
    s = LLMSettings(vocab_size=120, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_len=16)
    tok = train_tokenizer(sents, s.vocab_size)
    build_llama(s, len(tok)).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    model, tok = quantized_causal_lm(str(tmp_path / "lm"), apsq.APSQConfig(mode="apsq", gs=2, tile=16),
                                     calibration=sents[:3], device="cuda")
    assert module_device(model).type == "cuda"
    enc = to_device(dict(tok(sents[:2], return_tensors="pt", padding=True)), module_device(model))
    with torch.no_grad():
        assert torch.isfinite(model(**enc).logits).all()
