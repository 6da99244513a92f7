"""Issue 22 item 4: APSQ inside Hugging Face ``Trainer`` (public report: issue 22, "Own trainers lose the
recipe": Trainer's default AdamW moved 0 of 39 step sizes in 100 steps, silently)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import apsq
from apsq.errors import APSQError
from apsq.integrations.transformers import APSQTrainer, StepSizeWarning
from apsq.train.config import DistillConfig, ScheduleConfig, TrainConfig
from apsq.train.batches import global_batch
from apsq.train.loop import run_steps
from apsq.train.optim import make_optimizer

transformers = pytest.importorskip("transformers")

STEPS, BATCH = 6, 8
SCHED = ScheduleConfig(steps=STEPS, batch_size=BATCH, lr=1e-3, scale_lr=0.2, weight_decay=0.01, warmup=0.5)


class _Data:
    """A tiny sentence-classification set in the loop's BatchSource form (``len``, ``batch(rows)``)."""

    def __init__(self, n: int = 32, length: int = 10) -> None:
        g = torch.Generator().manual_seed(5)
        self.ids = torch.randint(1, 60, (n, length), generator=g)
        self.labels = (self.ids[:, 0] > 30).long()

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        ids = self.ids[rows]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[rows]}


def _bert() -> torch.nn.Module:
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def _quantized(data: _Data) -> tuple[torch.nn.Module, torch.nn.Module]:
    fp = _bert()
    q = apsq.quantize_(copy.deepcopy(fp), apsq.APSQConfig(gs=2, tile=8, exclude=("classifier",)))
    calib = data.batch(list(range(16)))
    calib.pop("labels")
    apsq.calibrate(q, [calib])
    return fp, q


def _args(tmp_path, **kw) -> transformers.TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=STEPS, learning_rate=SCHED.lr,
                weight_decay=SCHED.weight_decay, warmup_steps=SCHED.warmup, train_sampling_strategy="sequential",
                use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", remove_unused_columns=False,
                dataloader_num_workers=0, seed=0)
    return transformers.TrainingArguments(**{**base, **kw})


def _steps_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kd", [False, True], ids=["ce", "distill"])
def test_trainer_moves_the_steps_exactly_as_apsq_train(tmp_path, kd):
    data = _Data()
    fp, q = _quantized(data)
    loop_model, trainer_model = q, copy.deepcopy(q)
    cfg = TrainConfig(distill=DistillConfig(temperature=2.0, kd_weight=1.0, ce_weight=0.5))
    teacher = fp.eval() if kd else None
    start = _steps_of(loop_model)
    run_steps(loop_model, make_optimizer(loop_model, SCHED), data, SCHED, cfg, "qat",
              teacher=copy.deepcopy(teacher) if kd else None)
    batches = [data.batch(global_batch(len(data), BATCH, t, cfg.seed, "qat")) for t in range(STEPS)]
    trainer = APSQTrainer(model=trainer_model, args=_args(tmp_path), train_dataset=batches,
                          data_collator=lambda items: items[0], teacher=copy.deepcopy(teacher) if kd else None,
                          distill=cfg.distill, scale_lr=SCHED.scale_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepSizeWarning)
        trainer.train()
    a, b = _steps_of(loop_model), _steps_of(trainer_model)
    step_names = [n for n in a if n.endswith(("log2_scale", "log2_scales"))]
    moved = sum(not torch.equal(a[n], start[n]) for n in step_names)
    assert moved >= len(step_names) // 2  # the steps do learn
    assert all(torch.equal(a[n], b[n]) for n in a), [n for n in a if not torch.equal(a[n], b[n])][:4]


def test_trainer_calibrates_a_fresh_model_once_and_never_a_trained_one(tmp_path):
    data = _Data()
    model = apsq.quantize_(_bert(), apsq.APSQConfig(gs=2, tile=8, exclude=("classifier",)))
    batches = [data.batch(list(range(i * 8, i * 8 + 8))) for i in range(4)]
    trainer = APSQTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=batches,
                          data_collator=lambda items: items[0], calibration_batches=2)
    trainer.train()
    assert not any(m.needs_init() for _, m in apsq.quant_layers(model))
    before = _steps_of(model)
    trainer2 = APSQTrainer(model=model, args=_args(tmp_path, max_steps=1, learning_rate=1e-12),
                           train_dataset=batches, data_collator=lambda items: items[0], scale_lr=1e-12)
    trainer2.train()  # already initialised: no calibration (it would move the exponents far more than 1e-12)
    after = _steps_of(model)
    assert max(float((before[n] - after[n]).abs().max()) for n in before) < 1e-9


def test_a_plain_trainer_on_an_apsq_model_warns_once(tmp_path):
    data = _Data()
    _, model = _quantized(data)
    batches = [data.batch(list(range(i * 8, i * 8 + 8))) for i in range(3)]
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, max_steps=3), train_dataset=batches,
                                   data_collator=lambda items: items[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    hits = [w for w in caught if issubclass(w.category, StepSizeWarning)]
    assert len(hits) == 1 and "make_optimizer" in str(hits[0].message)


def test_trainer_refuses_a_teacher_that_is_the_student(tmp_path):
    """quantize_ works in place: `q = apsq.quantize_(fp, cfg)` then teacher=fp froze the student and
    failed in torch with 'optimizer got an empty parameter list'."""
    data = _Data()
    fp = _bert()
    q = apsq.quantize_(fp, apsq.APSQConfig(gs=2, tile=8, exclude=("classifier",)))
    batches = [data.batch(list(range(8)))]
    with pytest.raises(APSQError, match="teacher shares parameters with the model"):
        APSQTrainer(model=q, args=_args(tmp_path), train_dataset=batches, data_collator=lambda items: items[0],
                    teacher=fp)
    assert all(p.requires_grad for p in q.parameters())  # nothing frozen


def test_trainer_refuses_a_float_model(tmp_path):
    with pytest.raises(APSQError, match="no quantized layer"):
        APSQTrainer(model=_bert(), args=_args(tmp_path), train_dataset=[{}])


def test_trainer_distils_a_causal_lm_over_its_real_tokens(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    fp = transformers.LlamaForCausalLM(cfg)
    model = apsq.quantize_(copy.deepcopy(fp), apsq.APSQConfig(gs=2, tile=8))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[2:, 7:] = 0  # two padded sentences
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}] * 3
    start = _steps_of(model)
    trainer = APSQTrainer(model=model, args=_args(tmp_path, max_steps=3), train_dataset=batches,
                          data_collator=lambda items: items[0], teacher=fp,
                          distill=DistillConfig(kd_weight=1.0, ce_weight=0.5), calibration_batches=1)
    out = trainer.train()
    assert out.training_loss == out.training_loss and out.training_loss > 0  # finite
    now = _steps_of(model)
    assert sum(not torch.equal(now[n], start[n]) for n in now if n.endswith(("log2_scale", "log2_scales"))) > 10
    with pytest.raises(APSQError, match="hidden_weight > 0 is supported for classifier logits"):
        APSQTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=batches,
                    data_collator=lambda items: items[0], teacher=fp, distill=DistillConfig(hidden_weight=0.1)).train()


def test_distilling_a_classifier_needs_labels(tmp_path):
    """A teacher and classifier logits: the batch's labels pick the loss (classes / regression); a batch
    without them is an APSQError naming ``labels`` (it was an AttributeError on None)."""
    data = _Data()
    fp, q = _quantized(data)
    batch = data.batch([0, 1, 2])
    trainer = APSQTrainer(model=q, args=_args(tmp_path, max_steps=1), train_dataset=[batch], teacher=fp)
    assert torch.isfinite(trainer.compute_loss(q, batch))  # with labels: the KD loss
    batch.pop("labels")
    with pytest.raises(APSQError, match="needs 'labels' in every batch"):
        trainer.compute_loss(q, batch)


def test_the_optimizer_rule_is_public():
    import apsq.train as t
    from apsq.train import optim

    for name in ("make_optimizer", "param_groups", "lr_factor", "clip_grad_norms_"):
        assert name in t.__all__ and getattr(t, name) is getattr(optim, name)
    assert "ScheduleConfig" in t.__all__ and t.ScheduleConfig is ScheduleConfig
