"""A user's own decoder checkpoint (a LLaMA folder whose tokenizer has no padding token, as LLaMA's,
Mistral's and GPT-2's do not) as `model.name`: `apsq train` pads with the end-of-sequence token and
tells the model, trains, and exports a model that classifies padded batches like single sentences."""

from __future__ import annotations

import pytest
import torch

from apsq.errors import APSQError
from apsq.train.config import parse_config
from apsq.train.loop import train
from apsq.train.models import build_model, load_tokenizer

from standin_words import WORDS_NEG, WORDS_POS


def _save_decoder(folder, eos: bool = True):
    """A 1-layer LlamaForCausalLM and a word-level tokenizer with <s> (and </s>), no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "the", "movie", "is", "and", *WORDS_POS, *WORDS_NEG]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    special = {"bos_token": "<s>", "unk_token": "<unk>", **({"eos_token": "</s>"} if eos else {})}
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                 bos_token_id=1, eos_token_id=2)).save_pretrained(folder)
    return folder


def test_a_decoder_folder_without_pad_token_trains_and_exports(tmp_path, standin, make_config):
    folder = _save_decoder(tmp_path / "llama")
    cfg = parse_config(make_config(standin, model={"name": str(folder), "max_len": 16},
                                   finetune={"steps": 1}, qat={"steps": 2},
                                   apsq={"exclude": ["score"]}, distill={"hidden_weight": 0.0}))
    tok = load_tokenizer(cfg)
    assert tok.pad_token == "</s>"
    assert build_model(cfg).config.pad_token_id == tok.pad_token_id == 2
    out = tmp_path / "run"
    res = train(cfg, out, progress=False)  # before the fix: "Cannot handle batch sizes > 1 if no padding token"
    assert 0.0 <= res["accuracy"] <= 1.0

    import apsq.integrations.transformers  # noqa: F401  (registers the "apsq" quantization method)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from apsq.nn.layers import QuantLinear

    loaded = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    assert isinstance(loaded.model.layers[0].mlp.down_proj, QuantLinear)
    hf_tok = AutoTokenizer.from_pretrained(out / "hf")
    batch = hf_tok(["the movie is good and warm", "the movie is dull"], return_tensors="pt", padding=True)
    with torch.no_grad():
        both = loaded(**batch).logits
        alone = loaded(**hf_tok(["the movie is dull"], return_tensors="pt")).logits
    assert torch.allclose(both[1:], alone, atol=1e-6)


def test_a_half_precision_checkpoint_trains_in_float32(tmp_path, standin, make_config):
    """transformers 5 loads a checkpoint in the dtype it was saved in (LLaMA's: bf16 / fp16), and apsq train
    then trained bf16 weights with AdamW (updates of 3e-5 round away) while its docs said float32."""
    from transformers import AutoModelForCausalLM

    folder = _save_decoder(tmp_path / "llama")
    AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16).save_pretrained(folder)
    cfg = parse_config(make_config(standin, model={"name": str(folder)}))
    assert {p.dtype for p in build_model(cfg).parameters()} == {torch.float32}


def test_a_tokenizer_without_pad_or_eos_is_refused_naming_the_model(tmp_path, standin, make_config):
    folder = _save_decoder(tmp_path / "llama", eos=False)
    cfg = parse_config(make_config(standin, model={"name": str(folder)}))
    with pytest.raises(APSQError, match=r"model\.name .*neither a padding nor an end-of-sequence token"):
        load_tokenizer(cfg)
