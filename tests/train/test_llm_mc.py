"""The local lm-eval multiple-choice task (sentence completion) and its per-variant runner."""

from __future__ import annotations

import json

import pytest

from apsq.errors import APSQError
from apsq.eval.lm_eval_adapter import MC_TASK, completion_items, mc_sweep, write_mc_task
from apsq.eval.llm import LLMSettings, _train, build_llama, encode, train_tokenizer

SENTS = [f"the {a} film was {b} and {c} from start to {d}" for a in ("new", "old", "long", "short")
         for b in ("good", "bad", "fine") for c in ("funny", "dull", "warm") for d in ("end", "finish")]


def test_items_well_formed_and_deterministic():
    items = completion_items(SENTS, 20, seed=3)
    assert len(items) == 20 and items == completion_items(SENTS, 20, seed=3)
    assert items != completion_items(SENTS, 20, seed=4)
    contexts = set()
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4  # no duplicate choices
        assert 0 <= it["label"] < 4
        whole = it["context"] + " " + it["choices"][it["label"]]
        assert whole in SENTS  # gold = the true ending of the sentence the context starts
        contexts.add(it["context"] + "|" + it["choices"][it["label"]])
    assert len(contexts) == 20  # 20 different sentences
    assert {it["label"] for it in completion_items(SENTS, 60, seed=0)} == {0, 1, 2, 3}  # gold position shuffled
    with pytest.raises(APSQError, match="n="):
        completion_items(SENTS[:3], 5)
    for it in completion_items(SENTS, 10, seed=1, ending_words=5):
        assert all(len(c.split()) == 5 for c in it["choices"]) and len(it["context"].split()) == 6
    with pytest.raises(APSQError, match="ending_words"):
        completion_items(SENTS, 5, ending_words=6)
    assert completion_items(["too short"] * 9 + SENTS[:4], 4, min_words=6)[0]["context"].startswith("the")


def test_mc_sweep_accuracies_per_variant(tmp_path):
    pytest.importorskip("lm_eval")
    s = LLMSettings(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_len=16,
                    batch_size=8, lr=5e-3)
    tok = train_tokenizer(SENTS, s.vocab_size)
    model = build_llama(s, len(tok))
    _train(model, encode(tok, SENTS, s.max_len), s, tok.pad_token_id, 40, progress=False)
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    items = completion_items(SENTS, 20, seed=0)
    folder = write_mc_task(items, tmp_path / "task")
    assert [json.loads(x) for x in (folder / f"{MC_TASK}.jsonl").read_text().splitlines()] == items
    res = mc_sweep(str(tmp_path / "lm"), folder, (2,), tile=8, calibration=SENTS[:4], batch_size=16,
                   progress=False)
    scores = [res["fp32"], res["w8a8"], res["psq"], res["apsq"]["2"]]
    assert set(res["apsq"]) == {"2"}
    for sc in scores:
        assert set(sc) == {"acc", "acc_norm"}
        for v in sc.values():
            assert 0.0 <= v <= 1.0 and abs(v * 20 - round(v * 20)) < 1e-9  # a fraction of 20 items
