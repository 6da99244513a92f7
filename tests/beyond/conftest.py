"""Shared fixtures of tests/beyond: a small digits config and an (untrained) FP32 checkpoint."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from apsq.train.checkpoint import atomic_save_tensors
from apsq.train.models import DigitsCNN

_CFG = {"seed": 0, "model": {"name": "digits-cnn", "num_labels": 10}, "data": {"name": "digits", "eval_limit": 96},
       "apsq": {"mode": "apsq", "gs": 2, "tile": 16, "psum_bits": 8, "exclude": ["classifier"]},
       "qat": {"steps": 2, "batch_size": 32, "calib_batches": 2}, "eval": {"batch_size": 96}, "threads": 1}



@pytest.fixture(scope="module")
def digits_cfg() -> dict:
    return dict(_CFG)


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    torch.manual_seed(0)
    m = DigitsCNN(10)
    atomic_save_tensors(d / "fp32.safetensors", {f"model/{k}": v for k, v in m.state_dict().items()})
    (d / "cfg.yaml").write_text(yaml.safe_dump(_CFG))
    return d
