"""The A2Q / A2Q+ baseline (brevitas, an optional dependency): the accumulator bound and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("brevitas")

from apsq.beyond.a2q import a2q_calibrate, a2q_quantize_  # noqa: E402
from apsq.eval.setup import workload_of  # noqa: E402
from apsq.cli import app  # noqa: E402
from apsq.hw.energy import evaluate  # noqa: E402
from apsq.train.config import parse_config  # noqa: E402


pytestmark = pytest.mark.optional


def test_a2q_bound_holds():
    """After A2Q quantization every output channel's integer l1-norm x max |input code| fits P bits."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 8))
    x = torch.randn(128, 64)
    for p in (16, 12):
        q = a2q_quantize_(torch.nn.Sequential(torch.nn.Linear(64, 8)), p)
        q.load_state_dict(m.state_dict(), strict=False)
        a2q_calibrate(q, [x])
        lay = q[0]
        with torch.no_grad():
            qi = lay.input_quant(x)
            qw = lay.quant_weight(quant_input=qi)
            iw = (qw.value / qw.scale).round()
            acc = (qi.value / qi.scale).round() @ iw.T
        assert float(iw.abs().sum(1).max()) * 128 <= 2 ** (p - 1) - 1
        assert float(acc.abs().max()) <= 2 ** (p - 1) - 1


def test_a2q_cli(setup_files, tmp_path, runner, digits_cfg):
    d = setup_files
    out = tmp_path / "a2q.json"
    r = runner.invoke(app, ["beyond", "a2q", "-c", str(d / "cfg.yaml"), "--fp32", str(d / "fp32.safetensors"),
                            "--only", "apsq_gs2_int8,a2q_acc16", "--qat-steps", "2", "--eval-limit", "0",
                            "--json", str(out), "--override-tile"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    v = res["variants"]
    assert set(v) == {"apsq_gs2_int8", "a2q_acc16"}
    for x in v.values():
        assert 0 <= x["qat"]["accuracy"] <= 1 and x["qat"]["kl"] >= 0
    wl = workload_of(parse_config(digits_cfg))
    assert v["a2q_acc16"]["energy"]["is"]["total_uj"] == pytest.approx(
        evaluate(wl, "is", "none", 1, 8, baseline_bits=16).total_pj / 1e6)
