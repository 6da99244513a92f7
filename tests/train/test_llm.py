"""The LLM pieces: BPE tokenizer, small LLaMA, perplexity, and the lm-eval adapter on a local task."""

from __future__ import annotations

import json
import math

import pytest
import torch

from apsq.eval.llm import LLMSettings, _train, build_llama, encode, perplexity, train_tokenizer

SENTS = [f"the {a} film was {b} and {c}" for a in ("new", "old", "long", "short") for b in ("good", "bad", "fine")
         for c in ("funny", "dull", "warm")]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    s = LLMSettings(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_len=16,
                    batch_size=8, lr=5e-3)
    tok = train_tokenizer(SENTS, s.vocab_size)
    model = build_llama(s, len(tok))
    seqs = encode(tok, SENTS, s.max_len)
    before = perplexity(model, seqs, tok.pad_token_id)
    _train(model, seqs, s, tok.pad_token_id, 40, progress=False)
    d = tmp_path_factory.mktemp("lm")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return s, tok, model, seqs, before, d


def test_tokenizer_and_training_lower_perplexity(tiny_lm):
    s, tok, model, seqs, before, _ = tiny_lm
    assert all(x[0] == tok.bos_token_id and x[-1] == tok.eos_token_id for x in seqs)
    assert tok.decode(seqs[0][1:-1]).strip() == SENTS[0]
    after = perplexity(model, seqs, tok.pad_token_id)
    assert before > 0.8 * len(tok) and after < before / 5  # uniform at init, learned after


def test_quantized_perplexity_close_and_gs1_not_best(tiny_lm):
    import copy

    import apsq

    s, tok, model, seqs, _, _ = tiny_lm
    fp = perplexity(model, seqs, tok.pad_token_id)
    calib = [{"input_ids": torch.tensor([x])} for x in seqs[:6]]
    ppl = {}
    for mode, gs in (("none", 1), ("apsq", 1), ("apsq", 2)):
        q = copy.deepcopy(model)
        apsq.quantize_(q, apsq.APSQConfig(mode=mode, gs=gs, tile=8, exclude=("lm_head",)))
        apsq.calibrate(q, calib)
        ppl[(mode, gs)] = perplexity(q, seqs, tok.pad_token_id)
    assert all(math.isfinite(v) for v in ppl.values())
    assert abs(ppl[("none", 1)] / fp - 1) < 0.1  # W8A8 with exact PSUMs stays close to FP


def test_lm_eval_adapter_on_local_task(tiny_lm, tmp_path):
    pytest.importorskip("lm_eval")
    from apsq import APSQConfig
    from apsq.eval.lm_eval_adapter import run_lm_eval

    _, _, _, _, _, model_dir = tiny_lm
    data = tmp_path / "mc.jsonl"
    rows = [{"q": f"the {a} film was", "choices": ["good and funny", "zzzz qqq"], "label": 0}
            for a in ("new", "old", "long", "short")]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "apsq_local_mc.yaml").write_text(
        "task: apsq_local_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    res = run_lm_eval(str(model_dir), ["apsq_local_mc"], APSQConfig(mode="apsq", gs=2, tile=8),
                      include_path=tmp_path, batch_size=4, include_defaults=False,
                      calibration=[f"{r['q']} {r['choices'][0]}" for r in rows])
    acc = res["results"]["apsq_local_mc"]["acc,none"]
    assert acc == 1.0  # the trained continuation beats gibberish under the quantized model
    assert res["results"]["apsq_local_mc"]["acc_stderr,none"] == 0.0  # reported (sqrt(p (1-p) / (n-1)))
    assert res["calibration"] == {"sentences": 4}
    assert res["config"]["gs"] == 2 and res["config"]["exclude"] == ["lm_head"]
