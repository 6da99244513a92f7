"""A quantization setting that `quantize_` would refuse (an `exclude` / `overrides` pattern matching no
layer) fails `apsq train` and `apsq sweep` before the full-precision stage, leaving nothing behind;
before, the fine-tune ran (hours on a real model) and wrote its checkpoints, and a fixed config could
not resume them (another fingerprint)."""

from __future__ import annotations

import pytest
import torch

from apsq.errors import APSQError
from apsq.nn.transform import check_config, quant_layers
from apsq.train.config import parse_config
from apsq.train.loop import train


@pytest.mark.parametrize("apsq", [{"exclude": ["classifer"]}, {"overrides": {"bert.encoder.layer.9.*": {"gs": 1}}}])
def test_train_refuses_a_bad_pattern_before_fine_tuning(tmp_path, standin, make_config, apsq):
    steps = []
    cfg = parse_config(make_config(standin, apsq=apsq))
    out = tmp_path / "run"
    with pytest.raises(APSQError, match="matches no layer"):
        train(cfg, out, progress=False, on_step=lambda s, k: steps.append((s, k)))
    assert steps == [] and not out.exists()


def test_sweep_refuses_a_bad_pattern_before_the_shared_fine_tune(tmp_path, standin, make_config):
    from apsq.eval.sweep import sweep

    cfg = parse_config(make_config(standin, apsq={"exclude": ["classifer"]}))
    with pytest.raises(APSQError, match=r"did you mean 'classifier'"):
        sweep(cfg, tmp_path / "sweep", gs_values=(2,), energy=False, progress=False)
    assert not (tmp_path / "sweep").exists()


def test_check_config_raises_what_quantize_raises_and_changes_nothing():
    import apsq

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_config(model, apsq.APSQConfig(exclude=["2"]))  # fine: nothing raised, nothing changed
    bad = apsq.APSQConfig(exclude=["3"])
    with pytest.raises(APSQError) as checked:
        check_config(model, bad)
    with pytest.raises(APSQError) as quantized:
        apsq.quantize_(model, bad)
    assert str(checked.value) == str(quantized.value)
    assert not list(quant_layers(model)) and not hasattr(model, "apsq_report")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(APSQError, match="model must be a torch.nn.Module, got str"):
        check_config("model", bad)  # type: ignore[arg-type]


def test_the_early_check_leaves_a_model_it_cannot_build_to_the_run(monkeypatch):
    """Offline, a hub id's architecture cannot be had: the sweep's early check steps aside (a finished sweep
    is still reused; a run that needs the model reports the load error itself)."""
    from apsq.train.models import check_apsq_section

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_apsq_section(parse_config({"model": {"name": "bert-base-uncased"}, "apsq": {"exclude": ["nothing"]}}))


def test_a_bad_kernel_switch_fails_train_before_fine_tuning(tmp_path, standin, make_config, monkeypatch):
    """``APSQ_KERNELS=gpu`` failed ``apsq train`` only when the model was quantized, after the full-precision
    stage had run and written its checkpoints (trial-vis: a Segformer run on digit-scenes)."""
    monkeypatch.setenv("APSQ_KERNELS", "gpu")
    steps = []
    cfg = parse_config(make_config(standin, apsq={}))
    out = tmp_path / "run"
    with pytest.raises(APSQError, match=r"APSQ_KERNELS must be one of 'auto', 'reference', 'c', 'torch', 'triton'; got 'gpu'"):
        train(cfg, out, progress=False, on_step=lambda s, k: steps.append((s, k)))
    assert steps == [] and not out.exists()


def test_a_bad_kernel_switch_fails_the_sweep_and_quantize_before_anything_changes(tmp_path, standin, make_config,
                                                                                   monkeypatch):
    import apsq
    from apsq.eval.sweep import sweep

    monkeypatch.setenv("APSQ_KERNELS", "cuda")
    with pytest.raises(APSQError, match="APSQ_KERNELS must be one of"):
        sweep(parse_config(make_config(standin, apsq={})), tmp_path / "sweep", gs_values=(2,), energy=False,
              progress=False)
    assert not (tmp_path / "sweep").exists()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with pytest.raises(APSQError, match="APSQ_KERNELS must be one of"):
        apsq.quantize_(model, apsq.APSQConfig())
    assert not list(quant_layers(model)) and not hasattr(model, "apsq_report")
