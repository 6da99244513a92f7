"""``apsq eval llm-mc`` end to end on a tiny LLaMA (the study is :func:`apsq.eval.mc_study.movie_mc_study`;
the command parses, runs it and writes the JSON)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

SENTS = [f"the {a} film was {b} and {c} from start to {d}" for a in ("new", "old", "long", "short")
         for b in ("good", "bad", "fine") for c in ("funny", "dull", "warm") for d in ("end", "finish")]


@pytest.mark.slow
def test_llm_mc_command_writes_accuracies(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import torch

    from apsq.cli import app
    from apsq.eval import llm

    torch.manual_seed(0)
    s = llm.LLMSettings(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_len=16,
                        batch_size=8, lr=5e-3)
    tok = llm.train_tokenizer(SENTS, s.vocab_size)
    model = llm.build_llama(s, len(tok))
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    monkeypatch.setattr(llm, "load_corpus", lambda fetch=True, names=(): {"train": SENTS[:36], "test": SENTS[36:]})
    out = tmp_path / "mc.json"
    r = CliRunner().invoke(app, ["eval", "llm-mc", "--model", str(tmp_path / "lm"), "--items", "8", "--ending-words", "0", "--gs", "2",
                                 "--tile", "8", "--calib", "4", "--batch-size", "16", "--task-dir",
                                 str(tmp_path / "task"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["items"] == 8 and res["calibration_sentences"] == 4 and set(res["apsq"]) == {"2"}
    assert res["command"].startswith("apsq")  # sys.argv of the test runner follows
    for sc in (res["fp32"], res["w8a8"], res["psq"], res["apsq"]["2"]):
        assert 0.0 <= sc["acc"] <= 1.0 and abs(sc["acc"] * 8 - round(sc["acc"] * 8)) < 1e-9
    assert json.loads(r.stdout.splitlines()[-1])["apsq"] == res["apsq"]


def test_bad_gs_list_exits_2_naming_the_option(tmp_path):
    from apsq.cli import app

    r = CliRunner().invoke(app, ["eval", "llm-mc", "--model", str(tmp_path), "--gs", "2,x"])
    assert r.exit_code == 2 and "--gs must be comma-separated integers" in r.output
