"""bf16 / fp16 models and ``torch.autocast`` through quantized layers, calibrate and training steps
(issue 12 item 2).

What is asserted (the bound, where one is needed):

- Under ``torch.autocast`` (bf16 or fp16) a quantized layer computes exactly as outside it: its tile
  products run with autocast off (``apsq.nn.layers.base.exact_under_autocast``), so values and gradients
  are bit for bit those of the float32 model, on every kernel backend.
- A bf16 / fp16 layer quantizes and accumulates in float32 and rounds its output once. Codes of at
  most 8 bits are exact in bf16 (8 significant bits) and fp16 (11): on the same codes and steps,
  ``apsq`` with INT8 PSUMs -- whose output is one INT8 code times a power of two -- is *equal* to
  the float32 layer; ``psq`` and ``none`` (a sum of codes, wider than 8 bits) are the float32 result
  rounded once to the dtype (relative error <= 2^-8 in bf16), equal wherever that result fits.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import apsq
from apsq.device import module_dtype
from apsq.kernels import options
from apsq.nn.layers import QuantMatmul
from apsq.nn.transform import quant_layers
from apsq.quant.lsq import LSQQuantizer
from apsq.quant.ops import round_half_up

LOW = (torch.bfloat16, torch.float16)
MODES = ("none", "psq", "apsq")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-300.0, 300.0, width=32), min_size=1, max_size=64), st.sampled_from(LOW))
def test_round_half_up_is_exact_in_half_precision(values, dtype):
    """``floor(v + 1/2)`` of a bf16 / fp16 value equals the float64 result (``v + 1/2`` may round)."""
    v = torch.tensor(values).to(dtype)
    assert torch.equal(round_half_up(v).double(), torch.floor(v.double() + 0.5))


def test_lsq_codes_and_fake_quant_agree_across_dtypes():
    """An LSQ quantizer on bf16 / fp16 inputs: the float32 codes, and ``code * step`` exactly."""
    q = LSQQuantizer(8)
    x = _bf16_exact(4096, seed=0) * 3
    x[:2] = torch.tensor([0.498046875, -0.501953125]) * 2.0 ** -5  # x/s + 1/2 rounds in bf16
    q.init_from(x)
    for dtype in LOW:
        xl = x.to(dtype)
        assert torch.equal(q.codes(xl), q.codes(xl.float()))
        assert torch.equal(q(xl).float(), q(xl.float()))


def _bf16_exact(*shape: int, seed: int) -> torch.Tensor:
    """Random float32 values that bf16 (and therefore fp16 in this range) holds exactly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).bfloat16().float()


def _net(mode: str, seed: int = 0) -> nn.Module:
    """Conv2d -> ReLU -> Linear -> ReLU -> Linear, every layer quantized (tile 16, gs 2)."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(),
                      nn.Linear(32, 4))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.bfloat16().float())
    return apsq.quantize_(m, apsq.APSQConfig(mode=mode, gs=2, tile=16, exclude=()))


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", MODES)
def test_autocast_leaves_quantized_layers_exact(mode, dtype, backend):
    """Forward and backward under autocast equal the float32 run bit for bit (the reference loop is
    what a GPU without the Triton kernels runs: without autocast off its tile sums were rounded)."""
    x = _bf16_exact(4, 8, 8, 8, seed=1)
    with options.override(backend=backend):
        m = _net(mode)
        apsq.calibrate(m, [x])
        twin = copy.deepcopy(m)
        y = m(x)
        y.pow(2).sum().backward()
        with torch.autocast("cpu", dtype=dtype):
            ya = twin(x)
        ya.float().pow(2).sum().backward()
    assert torch.equal(ya.float(), y)
    for (name, p), pa in zip(m.named_parameters(), twin.parameters()):
        assert torch.equal(p.grad, pa.grad), name


@pytest.mark.parametrize("mode", MODES)
def test_autocast_matmul_exact(mode):
    torch.manual_seed(0)
    mm = QuantMatmul(32, apsq.nn.config.LayerQuantConfig(mode=mode, gs=2, tile=8))
    a, b = _bf16_exact(2, 5, 32, seed=2), _bf16_exact(2, 32, 6, seed=3)
    y = mm(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = mm(a, b)
    assert ya.dtype == torch.float32 and torch.equal(ya, y)


@pytest.mark.parametrize("dtype", LOW)
def test_calibrate_under_autocast_gives_the_same_steps(dtype):
    x = _bf16_exact(4, 8, 8, 8, seed=4)
    m, ma = _net("apsq"), _net("apsq")
    apsq.calibrate(m, [x])
    with torch.autocast("cpu", dtype=dtype):
        apsq.calibrate(ma, [x])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ma.state_dict().values()))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", ["psq", "apsq"])
def test_low_precision_w8a8_layer_equals_float32_on_the_same_codes(mode, dtype):
    """A bf16 / fp16 W8A8 QuantLinear vs the float32 one with the same weights, inputs and steps."""
    torch.manual_seed(5)
    lin = nn.Sequential(nn.Linear(128, 48, bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(lin[0].weight.bfloat16().float())
    apsq.quantize_(lin, apsq.APSQConfig(mode=mode, gs=2, tile=16, psum_bits=8))
    x = _bf16_exact(64, 128, seed=6)
    apsq.calibrate(lin, [x])
    low = copy.deepcopy(lin).to(dtype)
    q32, qlo = lin[0], low[0]
    assert qlo.weight.dtype == dtype and qlo.act_quant.log2_scale.dtype == torch.float32  # steps stay float32
    with torch.no_grad():
        y32, ylo = q32(x), qlo(x.to(dtype))
        assert torch.equal(q32.act_quant.codes(x).long(), qlo.act_quant.codes(x.to(dtype)).long())
    assert ylo.dtype == dtype
    assert torch.equal(ylo, y32.to(dtype))  # rounded once from the float32 (= integer) result
    fits = y32.to(dtype).float() == y32
    assert torch.equal(ylo.float()[fits], y32[fits])
    if mode == "apsq":  # one INT8 code x 2^e per output: exact in bf16 / fp16
        assert bool(fits.all())
    else:
        rel = ((ylo.float() - y32).abs() / y32.abs().clamp_min(1e-30)).max()
        assert float(rel) <= 2.0 ** -(8 if dtype == torch.bfloat16 else 11)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_model_calibrate_and_optimizer_steps(dtype):
    """A bf16 / fp16 model: calibrate on float32 batches (cast to the model's dtype), the same steps
    as the float32 twin, then 3 SGD steps: finite, the loss falls, everything but the step parameters (float32, issue 25
    item 1) stays in ``dtype``.
    (Pure-fp16 AdamW is not used: its default ``eps=1e-8`` is 0 in fp16 and turns the first update
    into NaN for any model -- fp16 training keeps float32 master weights or uses autocast.)"""
    x = _bf16_exact(16, 8, 8, 8, seed=7)
    target = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(8))
    m32 = _net("apsq", seed=3)
    low = copy.deepcopy(m32).to(dtype)
    apsq.calibrate(m32, [x])
    apsq.calibrate(low, [x])  # float32 batch: calibrate casts it to the model's dtype
    for (n, a), b in zip(m32.state_dict().items(), low.state_dict().values()):
        assert torch.equal(a.to(b.dtype), b), n
    opt = torch.optim.SGD(low.parameters(), lr=1e-2, momentum=0.9)
    losses = []
    low.train()
    for _ in range(3):
        out = low(x.to(dtype))
        assert out.dtype == dtype
        loss = nn.functional.cross_entropy(out.float(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert module_dtype(low) == dtype
    steps = {n for n, _ in low.named_parameters() if n.endswith(("log2_scale", "log2_scales"))}
    assert steps and all(p.dtype == (torch.float32 if n in steps else dtype) for n, p in low.named_parameters())
    assert all(bool(layer.psum.initialized) for _, layer in quant_layers(low))


@pytest.mark.parametrize("dtype", LOW)
def test_autocast_optimizer_steps_match_float32(dtype):
    """3 AdamW steps under autocast (loss in float32) give the float32 run's parameters bit for bit."""
    x = _bf16_exact(16, 8, 8, 8, seed=9)
    target = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(10))
    runs = []
    for amp in (False, True):
        m = _net("apsq", seed=4)
        apsq.calibrate(m, [x])
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        for _ in range(3):
            with torch.autocast("cpu", dtype=dtype, enabled=amp):
                out = m(x)
            loss = nn.functional.cross_entropy(out.float(), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs.append(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(runs[0].values(), runs[1].values()))


def test_bf16_transformer_calibrate_and_step():
    """A bf16 bert-tiny (attention matmuls quantized): calibrate, two optimizer steps, finite loss."""
    from apsq.train.config import parse_config
    from apsq.train.models import build_model

    cfg = parse_config({"model": {"name": "bert-tiny", "max_len": 12, "hidden_size": 32, "num_layers": 2}})
    torch.manual_seed(0)
    model = build_model(cfg).to(torch.bfloat16)
    apsq.quantize_(model, apsq.APSQConfig(mode="apsq", gs=2, tile=8, attention_matmuls=True, exclude=("classifier",)))
    g = torch.Generator().manual_seed(11)
    batch = {"input_ids": torch.randint(5, 100, (4, 12), generator=g), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    apsq.calibrate(model, [batch])
    assert any(isinstance(m, QuantMatmul) for _, m in quant_layers(model))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.train()
    labels = torch.tensor([0, 1, 0, 1])
    for _ in range(2):
        out = model(**batch)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        assert logits.dtype == torch.bfloat16
        loss = nn.functional.cross_entropy(logits.float(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)


def test_apsq_train_under_accelerate_bf16_mixed_precision(tmp_path):
    """`accelerate launch --mixed_precision bf16 ... apsq train`: the loop runs its forwards under
    autocast; fine-tuning, calibration and 3 QAT steps run and every logged loss is finite."""
    import json

    from accelerate import Accelerator

    from apsq.train.config import parse_config
    from apsq.train.loop import train

    cfg = {"seed": 0, "model": {"name": "digits-cnn", "num_labels": 10}, "data": {"name": "digits", "eval_limit": 64},
           "finetune": {"steps": 3, "batch_size": 32, "lr": 2e-3},
           "apsq": {"mode": "apsq", "gs": 2, "tile": 16, "exclude": ["classifier"]},
           "qat": {"steps": 3, "batch_size": 32, "calib_batches": 2}, "eval": {"batch_size": 64}, "threads": 1}
    from accelerate.state import AcceleratorState

    acc = Accelerator(cpu=True, mixed_precision="bf16")
    try:
        res = train(parse_config(cfg), tmp_path / "run", progress=False, accelerator=acc)
    finally:  # accelerate keeps one process-wide state: later runs in this worker must not inherit bf16
        AcceleratorState._reset_state(reset_partial_state=True)
    assert res["qat_steps"] == 3 and 0.0 <= res["accuracy"] <= 1.0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r.get("stage") == "qat" and "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_resume_under_accelerate_bf16_equals_the_uninterrupted_run(tmp_path):
    """A run killed during QAT and resumed under bf16 mixed precision ends with the same weights and
    losses as an uninterrupted one: the teacher and the student are the same modules in both (no
    autocast wrapper left on the fine-tuned model by the first stage's ``prepare``)."""
    import json

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from apsq.train.checkpoint import read_tensors
    from apsq.train.config import parse_config
    from apsq.train.loop import train

    cfg = parse_config({"seed": 0, "model": {"name": "digits-cnn", "num_labels": 10},
                        "data": {"name": "digits", "eval_limit": 64},
                        "finetune": {"steps": 3, "batch_size": 32, "lr": 2e-3},
                        "apsq": {"mode": "apsq", "gs": 2, "tile": 16, "exclude": ["classifier"]},
                        "qat": {"steps": 4, "batch_size": 32, "calib_batches": 2}, "eval": {"batch_size": 64},
                        "save_every": 1, "threads": 1})

    class Kill(Exception):
        pass

    def kill_at_qat_2(stage: str, step: int) -> None:
        if stage == "qat" and step == 2:
            raise Kill

    def run(out, **kw):
        try:
            return train(cfg, out, progress=False, accelerator=Accelerator(cpu=True, mixed_precision="bf16"), **kw)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)

    run(tmp_path / "a")
    with pytest.raises(Kill):
        run(tmp_path / "b", on_step=kill_at_qat_2)
    run(tmp_path / "b", resume=True)
    ta, _ = read_tensors(tmp_path / "a" / "checkpoint.safetensors")
    tb, _ = read_tensors(tmp_path / "b" / "checkpoint.safetensors")
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k

    def losses(run_dir):
        recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in recs if r.get("stage") == "qat" and "loss" in r]

    assert losses(tmp_path / "a") == losses(tmp_path / "b")
