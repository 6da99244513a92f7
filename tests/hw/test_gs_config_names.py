"""``apsq energy --gs-config``: one APSQConfig file means the same layers to ``quantize_`` and to the energy
model (a new user's run, issue "bring your own model"). Before the fix an override written with the
attention-matmul names ``quantize_`` documents (``*.qk_matmul``) was silently ignored by the energy model
(it looked for ``*.apsq_qk``), and an override pattern matching no layer at all (a typo) priced the
default gs without a word."""

from __future__ import annotations

import pytest

import apsq
from apsq.errors import APSQError
from apsq.hw.energy import evaluate
from apsq.hw.workloads import builtin_workload


@pytest.fixture(scope="module")
def bert():
    return builtin_workload("bert-base", seq_len=16)


def _gs(workload, cfg):
    return dict(zip((ly.name for ly in workload.layers), workload.gs_array(cfg).tolist()))


@pytest.mark.parametrize("pattern", ["*.qk_matmul", "*.apsq_qk"])
def test_attention_overrides_use_quantize_names(bert, pattern):
    cfg = apsq.APSQConfig(gs=2, overrides={pattern: {"gs": 4}})
    gs = _gs(bert, cfg)
    assert gs["bert.encoder.layer.0.attention.self.qk"] == 4  # was 2 for '*.qk_matmul'
    assert gs["bert.encoder.layer.0.attention.self.av"] == 2
    assert gs["bert.encoder.layer.0.attention.self.query"] == 2


def test_evaluate_prices_the_quantize_name_override(bert):
    """The same file quantize_ accepts (``*.qk_matmul``) prices QK^T at its gs in the energy report."""
    names = [ly.name for ly in bert.layers]
    r = evaluate(bert, "is", "apsq", apsq.APSQConfig(gs=2, overrides={"*.qk_matmul": {"gs": 4}}))
    assert r.gs[names.index("bert.encoder.layer.5.attention.self.qk")] == 4
    assert r.gs[names.index("bert.encoder.layer.5.attention.self.av")] == 2


@pytest.mark.parametrize("pattern, hint", [("*.intermediat.dense", "did you mean"), ("my_head", "matches no layer")])
def test_an_override_matching_no_layer_is_an_error_naming_it(bert, pattern, hint):
    cfg = apsq.APSQConfig(gs=2, overrides={pattern: {"gs": 4}})
    with pytest.raises(APSQError, match="overrides pattern") as e:
        bert.gs_array(cfg)
    assert repr(pattern) in str(e.value) and hint in str(e.value)
    assert "bert.encoder.layer.0.attention.self.query" in str(e.value) or "did you mean" in str(e.value)


def test_cli_gs_config_typo_exits_2(tmp_path):
    from typer.testing import CliRunner

    from apsq.cli import app

    cfg = tmp_path / "gs.yaml"
    cfg.write_text("gs: 2\noverrides:\n  'c9': {gs: 4}\n")
    r = CliRunner().invoke(app, ["energy", "-m", "bert-base", "--seq-len", "16", "--gs-config", str(cfg)])
    assert r.exit_code == 2 and "'c9'" in r.output and "matches no layer" in " ".join(r.output.split())

