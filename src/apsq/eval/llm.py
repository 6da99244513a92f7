"""Experiment 3 (LLM): a small LLaMA-architecture model trained here on the review / tweet / news
sentences, then perplexity per PSUM variant.

* corpus: the four ground-truth files of the vaderSentiment sdist (:mod:`apsq.data.rt_sentences`),
  every sentence (rating ignored), split by :func:`apsq.data.splits.split_of` on
  ``"llm-corpus:<file>:<id>"`` (80 / 10 / 10);
* tokenizer: byte-level BPE trained with ``tokenizers`` on the training split;
* model: ``LlamaForCausalLM`` built from a config (no weights exist offline), trained in full
  precision with AdamW;
* each variant: :func:`apsq.quantize_` (all linear layers but ``lm_head``), :func:`apsq.calibrate`,
  optional short QAT with distillation from the FP model, then test perplexity
  ``exp(mean token negative log-likelihood)``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import apsq
from apsq.data.rt_sentences import CORPORA, corpus_path
from apsq.data.splits import split_of
from apsq.device import module_device, to_device
from apsq.train.config import QATConfig

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


@dataclass(frozen=True)
class LLMSettings:
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 352
    max_len: int = 48
    """Tokens per sentence (longer ones are cut)."""
    train_steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    qat_steps: int = 0
    """Short QAT + KD (logits) per variant after calibration (0: calibration only)."""
    qat_lr: float = 1e-4
    scale_lr: float = QATConfig.model_fields["scale_lr"].default
    """The library's default step-size rate (:class:`apsq.train.config.QATConfig`), the recipe of every study."""
    tile: int = 32
    eval_limit: int | None = 2000
    seed: int = 0


def load_corpus(fetch: bool = True, names: Sequence[str] = tuple(CORPORA)) -> dict[str, list[str]]:
    """All sentences of the files ``names`` (default: all four), by split."""
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for name in names:
        text = corpus_path(name, fetch=fetch).read_bytes().decode("utf-8", errors="replace")
        for line in text.splitlines():
            parts = line.split("\t", 2)
            if len(parts) == 3 and parts[2].strip():
                out[split_of("llm-corpus", f"{name}:{parts[0].strip()}")].append(parts[2].strip())
    return out


def train_tokenizer(sentences: Sequence[str], vocab_size: int):
    """Byte-level BPE (``tokenizers``) wrapped as a ``PreTrainedTokenizerFast`` with bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def encode(tokenizer, sentences: Sequence[str], max_len: int) -> list[list[int]]:
    """``<s> tokens </s>``, cut to ``max_len``."""
    ids = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    return [([tokenizer.bos_token_id] + x + [tokenizer.eos_token_id])[:max_len] for x in ids]


def _batch(seqs: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def build_llama(s: LLMSettings, vocab: int) -> LlamaForCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(s.seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
                      num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
                      num_key_value_heads=s.num_heads, max_position_embeddings=max(64, s.max_len),
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def _nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and the token count."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, (tgt != -100).sum()


@torch.no_grad()
def perplexity(model: nn.Module, seqs: Sequence[list[int]], pad: int, batch_size: int = 64) -> float:
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    tot, n = 0.0, 0
    device = module_device(model)
    for i in range(0, len(order), batch_size):
        ids, mask = to_device(_batch([seqs[j] for j in order[i: i + batch_size]], pad), device)
        loss, cnt = _nll(model, ids, mask)
        tot, n = tot + float(loss), n + int(cnt)
    return math.exp(tot / n)


def _batches(seqs: Sequence[list[int]], batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    perm: list[int] = []
    for _ in range(steps):
        if len(perm) < batch:
            perm += torch.randperm(len(seqs), generator=g).tolist()
        take, perm = perm[:batch], perm[batch:]
        yield [seqs[i] for i in take]


def _train(model: nn.Module, seqs, s: LLMSettings, pad: int, steps: int, teacher: nn.Module | None = None,
           desc: str = "train", progress: bool = True) -> None:
    from apsq.train.config import ScheduleConfig
    from apsq.train.optim import clip_grad_norms_, lr_factor, make_optimizer

    sched = ScheduleConfig(steps=steps, batch_size=s.batch_size, lr=s.lr if teacher is None else s.qat_lr,
                           scale_lr=s.scale_lr, weight_decay=0.0, warmup=0.1)
    opt = make_optimizer(model, sched)  # the library's one rule (apsq.train.param_groups)
    device = module_device(model)
    model.train()
    for step, seq in enumerate(tqdm(_batches(seqs, s.batch_size, steps, s.seed + 1), total=steps, desc=desc,
                                    disable=not progress, leave=False)):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, sched)
        ids, mask = to_device(_batch(seq, pad), device)
        if teacher is None:
            loss, cnt = _nll(model, ids, mask)
            loss = loss / cnt
        else:
            with torch.no_grad():
                t = teacher(input_ids=ids, attention_mask=mask).logits
            logit = model(input_ids=ids, attention_mask=mask).logits
            keep = mask.bool()
            loss = F.kl_div(F.log_softmax(logit[keep], -1), F.log_softmax(t[keep], -1), log_target=True,
                            reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norms_(opt.param_groups)
        opt.step()


def llm_sweep(settings: LLMSettings = LLMSettings(), gs_values: Sequence[int] = (1, 2, 3, 4),
              progress: bool = True, save_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the FP model, then test perplexity of W8A8-INT32-PSUM, psq and APSQ per gs.

    Returns ``{"fp32": ppl, "w8a8": ppl, "psq": ppl, "apsq": {"<gs>": ppl}, "settings": ...}``.
    ``save_dir`` keeps the trained FP model and tokenizer (``save_pretrained``).
    """
    t0 = time.time()
    corpus = load_corpus()
    tok = train_tokenizer(corpus["train"], settings.vocab_size)
    pad = tok.pad_token_id
    train = encode(tok, corpus["train"], settings.max_len)
    test = encode(tok, corpus["test"], settings.max_len)
    if settings.eval_limit is not None and settings.eval_limit < len(test):
        g = torch.Generator().manual_seed(1234)
        test = [test[i] for i in sorted(torch.randperm(len(test), generator=g)[: settings.eval_limit].tolist())]
    model = build_llama(settings, len(tok))
    _train(model, train, settings, pad, settings.train_steps, desc="fp32", progress=progress)
    if save_dir is not None:
        model.save_pretrained(save_dir)
        tok.save_pretrained(save_dir)
    out: dict[str, Any] = {"fp32": perplexity(model, test, pad), "apsq": {}}
    calib = [to_device(dict(zip(("input_ids", "attention_mask"), _batch(b, pad))), module_device(model))
             for b in _batches(train, settings.batch_size, 4, settings.seed + 2)]
    variants = [("w8a8", "none", 1), ("psq", "psq", 1)] + [(str(g), "apsq", g) for g in gs_values]
    for name, mode, gs in tqdm(variants, desc="variants", disable=not progress):
        q = copy.deepcopy(model)
        apsq.quantize_(q, apsq.APSQConfig(mode=mode, gs=gs, tile=settings.tile, exclude=("lm_head",)))
        apsq.calibrate(q, calib)
        if settings.qat_steps:
            _train(q, train, settings, pad, settings.qat_steps, teacher=model.eval(), desc=f"qat {name}",
                   progress=progress)
        ppl = perplexity(q, test, pad)
        if mode == "apsq":
            out["apsq"][name] = ppl
        else:
            out[name] = ppl
    out.update(settings=asdict(settings), test_sentences=len(test), train_sentences=len(train),
               seconds=round(time.time() - t0, 1))
    return out
