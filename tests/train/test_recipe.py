"""The QAT recipe's optimizer rule (issue 11): the power-of-two step sizes get their own rate, no
weight decay, an Adam eps below their gradients, and are clipped apart from the weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import apsq
from apsq.train.config import QATConfig, parse_config
from apsq.train.loop import cached_fp32_accuracy, eval_key, train
from apsq.train.optim import STEP_SIZE_EPS, clip_grad_norms_, lr_factor, make_optimizer, param_groups


def _quantized_layer(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 32))
    apsq.quantize_(m, apsq.APSQConfig(mode="apsq", gs=2, tile=16))
    x = torch.randn(8, 64)
    apsq.calibrate(m, [x])
    return m, x


def test_default_groups_give_step_sizes_their_rate_and_no_decay():
    m, _ = _quantized_layer()
    sched = QATConfig()
    groups = {g["name"]: g for g in param_groups(m, sched)}
    steps = [p for n, p in m.named_parameters() if n.endswith(("log2_scale", "log2_scales"))]
    assert len(steps) == 3  # input, weight and PSUM quantizers
    g = groups["step_sizes"]
    assert {id(p) for p in g["params"]} == {id(p) for p in steps}
    assert g["lr"] == g["base_lr"] == sched.scale_lr and g["weight_decay"] == 0.0
    assert g["eps"] == STEP_SIZE_EPS < 1e-12
    assert groups["weights"]["weight_decay"] == sched.weight_decay > 0
    assert groups["weights"]["clip_group"] == groups["no_decay"]["clip_group"] != g["clip_group"]
    every = [id(p) for gr in groups.values() for p in gr["params"]]
    assert sorted(every) == sorted(id(p) for p in m.parameters() if p.requires_grad)  # each exactly once
    opt = make_optimizer(m, sched)
    by_name = {gr["name"]: gr for gr in opt.param_groups}
    assert by_name["step_sizes"]["eps"] == STEP_SIZE_EPS and by_name["weights"]["eps"] == 1e-8


def test_default_rate_can_move_an_exponent_within_the_default_schedule():
    """An exponent changes once its log2 parameter moved by 0.5; Adam moves it by at most about
    ``lr`` per step, so the schedule's summed step-size rate must reach well past 0.5."""
    s = QATConfig()
    budget = sum(s.scale_lr * lr_factor(t, s) for t in range(s.steps))
    assert budget >= 2.0
    short = parse_config({"qat": {"steps": 100}}).qat  # the committed MiniLM configs
    assert sum(short.scale_lr * lr_factor(t, short) for t in range(short.steps)) >= 2.0


def test_every_study_trains_step_sizes_at_the_library_rate():
    """The causal-LM study has its own loop; its step-size rate must still be the library's default."""
    from apsq.eval.llm import LLMSettings

    assert LLMSettings().scale_lr == QATConfig().scale_lr


def test_large_weight_gradients_do_not_starve_the_step_sizes():
    """Weight gradients 1e4 times the clip limit and step-size gradients of 1e-10 (MiniLM's typical
    size, results/recipe/step_size_dynamics.json): the step sizes still move by ~scale_lr in one Adam step.
    Under the old rule (one global clip, eps 1e-8) they moved by ~1e-6 of it."""
    m, x = _quantized_layer()
    sched = QATConfig()
    opt = make_optimizer(m, sched)
    y = m(x)
    (1e4 * y.square().mean()).backward()
    for n, p in m.named_parameters():
        if n.endswith(("log2_scale", "log2_scales")):
            p.grad = torch.full_like(p, 1e-10)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    norms = clip_grad_norms_(opt.param_groups)
    assert norms["weights"] > 100 and norms["step_sizes"] < 1e-8
    opt.step()
    for n, p in m.named_parameters():
        moved = (before[n] - p.detach()).abs()
        if n.endswith(("log2_scale", "log2_scales")):
            assert torch.allclose(moved, torch.full_like(moved, sched.scale_lr), rtol=1e-3), n
    # the old rule, for contrast: the same gradients, one global clip and AdamW's default eps
    m2, x2 = _quantized_layer()
    old = torch.optim.AdamW([{k: v for k, v in g.items() if k not in ("eps", "clip_group", "max_grad_norm")}
                             for g in param_groups(m2, sched)], lr=sched.lr)
    (1e4 * m2(x2).square().mean()).backward()
    for n, p in m2.named_parameters():
        if n.endswith(("log2_scale", "log2_scales")):
            p.grad = torch.full_like(p, 1e-10)
    start = {n: p.detach().clone() for n, p in m2.named_parameters() if n.endswith("log2_scales")}
    torch.nn.utils.clip_grad_norm_(m2.parameters(), 1.0)
    old.step()
    for n, p in m2.named_parameters():
        if n in start:
            assert float((start[n] - p.detach()).abs().max()) < 1e-3 * sched.scale_lr


def test_clip_groups_are_clipped_separately():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([0.3, 0.4])
    groups = [{"params": [a], "max_grad_norm": 1.0, "clip_group": "weights"},
              {"params": [b], "max_grad_norm": 1.0, "clip_group": "step_sizes"},
              {"params": [nn.Parameter(torch.zeros(1))]}]
    norms = clip_grad_norms_(groups)
    assert norms == pytest.approx({"weights": 50.0, "step_sizes": 0.5})
    assert float(a.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(b.grad, torch.tensor([0.3, 0.4]))  # under its limit: untouched


def test_qat_run_reuses_the_stored_fp32_accuracy(tmp_path, standin, make_config):
    fp = train(parse_config(make_config(standin, apsq=None)), tmp_path / "fp32", progress=False)
    from apsq.train.checkpoint import read_tensors

    _, meta = read_tensors(tmp_path / "fp32" / "fp32.safetensors")
    cfg = parse_config(make_config(standin, finetune={"steps": 0, "init": str(tmp_path / "fp32" / "fp32.safetensors")},
                                   qat={"steps": 2}))
    assert meta["fp32_accuracy"] == fp["fp32_accuracy"] and meta["eval_key"] == eval_key(cfg)
    res = train(cfg, tmp_path / "qat", progress=False)
    assert res["fp32_accuracy"] == fp["fp32_accuracy"]
    recs = [json.loads(line) for line in (tmp_path / "qat" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("source") for r in recs if r["stage"] == "finetune"] == [str(tmp_path / "fp32" / "fp32.safetensors")]
    # another evaluation set: the stored accuracy does not apply
    other = parse_config(make_config(standin, data={"eval_limit": 5}))
    assert cached_fp32_accuracy(meta, other) is None
