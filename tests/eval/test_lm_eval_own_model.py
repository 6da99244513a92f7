"""``apsq eval lm-eval --model FOLDER`` on a user's own causal LM whose tokenizer has neither a BOS nor an
EOS token (a GPT-2 built from a config beside a BERT word-piece tokenizer, say): lm-eval scores each
continuation after that prefix token and crashed deep inside ``tokenizer.decode(None)`` ("'None' is not
an instance of 'Sequence'") after the model had been quantized and calibrated. Now it is an APSQError
naming the folder and the fix, before the model loads."""

from __future__ import annotations

import pytest
import torch

from apsq.errors import APSQError
from apsq.eval.lm_eval_adapter import quantized_causal_lm


def _save(folder, eos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[UNK]", "[SEP]", "the", "movie", "is", "good", "bad"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **({"eos_token": "[SEP]"} if eos else {})
                            ).save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_embd=8, n_layer=1, n_head=2, n_positions=16,
                               bos_token_id=None, eos_token_id=None)).save_pretrained(folder)
    return str(folder)


def test_a_tokenizer_without_bos_or_eos_is_refused_naming_the_folder(tmp_path):
    path = _save(tmp_path / "gpt", eos=False)
    with pytest.raises(APSQError, match=r"gpt'.* neither a bos_token nor an eos_token.*add_special_tokens"):
        quantized_causal_lm(path, None, device="cpu")


def test_an_eos_token_is_enough(tmp_path):
    model, tok = quantized_causal_lm(_save(tmp_path / "gpt", eos=True), None, device="cpu")
    assert tok.eos_token == "[SEP]" and not model.training


def test_mode_fp_is_described_as_the_model_as_loaded(tmp_path):
    """A QAT checkpoint under ``--mode apsq`` is refused and told to use ``--mode fp``, whose help said
    "'fp' leaves the model unquantized" (it evaluates the checkpoint's own trained quantization)."""
    from typer.testing import CliRunner

    import apsq
    import apsq.integrations.transformers  # noqa: F401
    from apsq.cli import app
    from transformers import AutoModelForCausalLM

    path = _save(tmp_path / "gpt", eos=True)
    m = AutoModelForCausalLM.from_pretrained(path)
    apsq.quantize_(m, apsq.APSQConfig(gs=2, tile=4))
    apsq.calibrate(m, [torch.randint(0, 7, (2, 5))])
    m.save_pretrained(path)
    with pytest.raises(APSQError, match=r"already APSQ-quantized .*--mode fp"):
        quantized_causal_lm(path, apsq.APSQConfig(gs=2, tile=4), device="cpu")
    model, _ = quantized_causal_lm(path, None, device="cpu")
    assert next(iter(model.state_dict())) and any("log2_scale" in k for k in model.state_dict())
    out = " ".join(CliRunner().invoke(app, ["eval", "lm-eval", "--help"]).output.replace("│", " ").split())
    assert "the model as loaded" in out and "leaves the model unquantized" not in out
