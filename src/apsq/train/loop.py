"""``train(config, output)``: full-precision fine-tuning, then QAT with distillation, on accelerate.

Run layout in ``output``:

* ``checkpoint.safetensors`` — the latest checkpoint (atomic; see :mod:`apsq.train.checkpoint`);
* ``fp32.safetensors`` — the fine-tuned full-precision model (the distillation teacher);
* ``metrics.jsonl`` — one JSON object per logged step / evaluation;
* ``result.json`` — accuracies and the run's settings, written at the end;
* ``config.json`` — the validated config;
* ``hf/`` — the final model in Hugging Face format (``save_pretrained`` + its tokenizer; Hugging Face
  models only), written atomically at the end: a quantized model's ``config.json`` holds its
  ``quantization_config`` and the weights its steps, so ``from_pretrained`` (with
  :mod:`apsq.integrations.transformers` imported) or ``apsq eval`` load it quantized, bit for bit.

Determinism: the global batch of step ``t`` is a fixed slice of seeded permutations of the training
set, and the RNG is reseeded from ``(seed, stage, t, rank)`` before every step
(:mod:`apsq.train.batches`), so a resumed run repeats exactly the steps an uninterrupted one would take
(same batches, same dropout masks). With ``P`` processes every process takes ``batch_size / P`` rows of
the global batch and gradients are averaged by DDP.

The pieces it runs live beside it: the optimizer rule (:mod:`apsq.train.optim`), the losses
(:mod:`apsq.train.losses`), evaluation (:mod:`apsq.train.evaluation`); this module holds the one step
loop (:func:`run_steps`) and the run around it (:func:`train`: stages, checkpoints, metrics, export).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from apsq.data.fileio import FolderLock, atomic_write_with, remove_orphan_temps
from apsq.device import module_device, module_dtype, to_device
from apsq.errors import APSQError
from apsq.train.batches import global_batch, split_batch, step_seed
from apsq.train.checkpoint import (
    atomic_save_tensors,
    atomic_write_text,
    load_model_state,
    optimizer_from_flat,
    optimizer_to_flat,
    read_tensors,
)
from apsq.train.config import ScheduleConfig, TrainConfig
from apsq.train.evaluation import evaluate, evaluate_glue, evaluate_segmentation
from apsq.train.losses import distill_loss, logits_of, task_loss
from apsq.train.optim import clip_grad_norms_, freeze_unused_psum_scales, lr_factor, make_optimizer
from apsq.train.segmentation import SegMetrics
from apsq.train.sharded import fsdp_requested, full_state, full_value, shard
from apsq.train.tasks import BatchSource, Task, build_task

STAGES = ("finetune", "qat")
CKPT, FP32, METRICS, RESULT = "checkpoint.safetensors", "fp32.safetensors", "metrics.jsonl", "result.json"
HF_EXPORT = "hf"

StepHook = Callable[[str, int], None]


# --- run helpers ------------------------------------------------------------------------------
def eval_key(cfg: TrainConfig) -> str:
    """Hash of what an FP32 model's accuracy depends on besides its weights: the model settings and
    the evaluation data (not the training subset, schedule or seed)."""
    d = {"model": cfg.model.model_dump(), "data": cfg.data.model_dump(exclude={"train_limit"})}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_fp32_accuracy(meta: dict[str, Any], cfg: TrainConfig) -> float | None:
    """The accuracy stored with an ``fp32.safetensors`` (``meta``) if it was measured on the same
    evaluation data as ``cfg``'s (:func:`eval_key`); ``None`` otherwise (evaluate again)."""
    acc = meta.get("fp32_accuracy")
    if isinstance(acc, (int, float)) and meta.get("eval_key") == eval_key(cfg):
        return float(acc)
    return None


def check_init(cfg: TrainConfig) -> None:
    """Refuse a missing ``finetune.init`` before anything is written, saying which run makes it."""
    init = cfg.finetune.init
    if init is None or Path(init).is_file():
        return
    folder = Path(init).parent
    hint = (f"run `apsq train --config configs/{folder.name}.yaml` first (its default output is {folder}/)"
            if folder.name.startswith("train_") else
            f"run the full-precision config (`apsq: null`) first with `--output {folder}`")
    raise APSQError(f"finetune.init: checkpoint {init} does not exist; it is the fp32.safetensors of a "
                    f"full-precision run: {hint}. Nothing was written.")


def run_steps(model: nn.Module, opt: torch.optim.Optimizer, data: BatchSource, sched: ScheduleConfig,
              cfg: TrainConfig, stage: str, *, teacher: nn.Module | None = None, start: int = 0, rank: int = 0,
              world: int = 1, device: torch.device | str | None = None,
              inputs_of: Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], torch.Tensor]] | None = None,
              backward: Callable[[torch.Tensor], None] | None = None, clip: Callable[..., Any] | None = None,
              after_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None) -> None:
    """The library's one training-step loop: steps ``start .. sched.steps - 1`` of ``stage``.

    Step ``t`` reseeds the RNG from ``(cfg.seed, stage, t, rank)``, sets every group's rate to
    ``base_lr * lr_factor(t, sched)``, takes rows ``rank*B/world .. (rank+1)*B/world`` of the global batch
    :func:`global_batch` ``(len(data), sched.batch_size, t, cfg.seed, stage)``, and minimises cross-entropy
    (``teacher`` None) or :func:`distill_loss` against the frozen ``teacher`` (which sees the batch in its
    own floating dtype). Gradients are clipped per group (:func:`clip_grad_norms_`).

    ``device``: where batches go (default: the model's); ``inputs_of(batch) -> (inputs, labels)`` moves
    them (default: to ``device``, dtypes kept); ``backward`` / ``clip``: accelerate's, or plain autograd /
    torch's clipping when None; ``after_step(t, loss_parts)`` runs after every optimizer step.
    Used by :func:`train` and by studies that train a model they built themselves (A2Q).

    Raises:
        APSQError: a non-finite loss (names the stage and step).
    """
    device = module_device(model) if device is None else device
    move = inputs_of or (lambda b: split_batch(b, device))
    per = sched.batch_size // world
    model.train()
    if teacher is not None:
        teacher.to(device).eval()
    hidden = teacher is not None and cfg.distill.hidden_weight > 0
    for step in range(start, sched.steps):
        torch.manual_seed(step_seed(cfg.seed, stage, step, rank))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, sched)
        idx = global_batch(len(data), sched.batch_size, step, cfg.seed, stage)
        inputs, labels = move(data.batch(idx[rank * per:(rank + 1) * per]))
        out = model(**inputs, output_hidden_states=True) if hidden else model(**inputs)
        if teacher is None:
            parts = {"loss": task_loss(logits_of(out), labels)}
        else:
            with torch.no_grad():
                tin = to_device(inputs, device, module_dtype(teacher))
                tout = teacher(**tin, output_hidden_states=True) if hidden else teacher(**tin)
            parts = distill_loss(out, tout, labels, cfg)
        if not torch.isfinite(parts["loss"]):
            raise APSQError(f"{stage} step {step}: the loss is {float(parts['loss'])}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(parts["loss"])
        clip_grad_norms_(opt.param_groups, clip)
        opt.step()
        if after_step is not None:
            after_step(step, parts)


def export_hf(model: nn.Module, tokenizer: Any, folder: Path) -> bool:
    """Write ``model.save_pretrained`` (and ``tokenizer.save_pretrained``) into ``folder`` atomically: a
    temporary folder renamed over it, the previous export kept until the new one is complete. Returns
    False (nothing written) for a model without ``save_pretrained``.

    Raises:
        APSQError: the write failed (disk full, ...); the previous export is intact.
    """
    save = getattr(model, "save_pretrained", None)
    if not callable(save):
        return False
    folder = Path(folder)

    def write(tmp: Path) -> None:
        save(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    old = folder.with_name(folder.name + ".previous")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    try:
        atomic_write_with(folder, write, what="Hugging Face export")
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


class MetricsLog:
    """JSON lines, appended by the main process; on resume, lines after the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, stage: str, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the crash
            if (STAGES.index(rec.get("stage", "finetune")), rec.get("step", 0)) <= (STAGES.index(stage), step):
                keep.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def log(self, **rec: Any) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


# --- the run ------------------------------------------------------------------------------------
class _Run:
    task: Task
    """The data and its metric (set by :meth:`run`)."""
    task_metrics: dict[str, float] | None
    """GLUE metrics of the latest evaluation."""
    segmentation: bool
    seg_metrics: SegMetrics | None
    """mIoU and pixel accuracy of the latest evaluation (segmentation)."""

    def __init__(self, cfg: TrainConfig, output: Path, resume: bool, on_step: StepHook | None, progress: bool,
                 accelerator: Any = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg, self.out, self.on_step = cfg, Path(output), on_step
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # FSDP2: apsq shards itself (accelerate would run DDP on CPU processes, silently, or shard before
        # calibration); FSDP1, one process or mixed precision are refused before accelerate starts
        self.fsdp = fsdp_requested(int(os.environ.get("WORLD_SIZE", "1")),
                                   os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
        if self.fsdp:
            # accelerate's FSDP launch asks transformers to load pretrained weights on local rank 0 only
            # (--fsdp_cpu_ram_efficient_loading, default true), the other ranks' on the meta device, and
            # counts on its own prepare() to broadcast them; apsq shards the model itself: every rank loads
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
        # cpu=True without CUDA: lets `accelerate launch --multi_gpu --num_processes N` (torchrun) run N
        # CPU processes with gloo (accelerate's `--cpu` launcher needs mpirun for N > 1).
        self.acc = accelerator or Accelerator(
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        self.main = self.acc.is_main_process
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.progress = progress and self.main
        for name, s in (("finetune", cfg.finetune), ("qat", cfg.qat)):
            if s.batch_size % self.world:
                raise APSQError(f"{name}.batch_size ({s.batch_size}) must be a multiple of the number of "
                                f"processes ({self.world})")
        self.state: dict[str, Any] = {"stage": "finetune", "step": 0}
        self.tensors: dict[str, torch.Tensor] = {}
        check_init(cfg)
        # one run per output folder: a second run into it fails at once, naming the holder (pid, host)
        self.lock = (FolderLock(self.out, "output folder", hint="wait for that run to finish or choose another "
                                "--output") if self.main else None)
        if self.lock is not None:
            self.lock.acquire()
            remove_orphan_temps(self.out)  # temp files of killed runs (no live writer: we hold the lock)
        try:
            self._check_output(resume)
        except BaseException:
            self.release()
            raise
        self.metrics = MetricsLog(self.out / METRICS, self.main)

    def release(self) -> None:
        """Drop the output-folder lock (idempotent; the OS drops it too if the process dies)."""
        if self.lock is not None:
            self.lock.release()

    def _check_output(self, resume: bool) -> None:
        ck = self.out / CKPT
        if resume:
            if not ck.exists():
                raise APSQError(f"--resume: no checkpoint in {self.out} (expected {CKPT}); start without --resume")
            self.tensors, self.state = read_tensors(ck)
            fp = self.state.get("fingerprint")
            if fp != self.cfg.fingerprint():
                old = self.state.get("config", {})
                new = self.cfg.weights_dump()
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise APSQError(f"checkpoint {ck} was written by a different config (differs in: "
                                f"{', '.join(diff) or 'unknown'}); use the original config or a new --output")
            if self.state.get("stage") not in STAGES or not isinstance(self.state.get("step"), int):
                raise APSQError(f"checkpoint {ck} has an invalid state {self.state!r}")
        elif any((self.out / f).exists() for f in (CKPT, FP32, RESULT)):
            raise APSQError(f"{self.out} already holds a run; pass --resume to continue it or choose another --output "
                            "(nothing was overwritten)")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", self.cfg.model_dump_json(indent=1))
        self.acc.wait_for_everyone()

    # -- checkpoints --
    def _save(self, stage: str, step: int, model: nn.Module, opt: torch.optim.Optimizer | None, **extra: Any) -> None:
        base = {k: v for k, v in self.state.items() if k != "optimizer"}
        self.state = {**base, **extra, "stage": stage, "step": step, "fingerprint": self.cfg.fingerprint(),
                      "config": self.cfg.weights_dump(mode="json")}
        if self.main or self.fsdp:  # sharded tensors are gathered on every rank (collectives)
            tensors = {f"model/{k}": v for k, v in self._model_state(model).items()}
            meta = dict(self.state)
            if opt is not None:
                ot, ometa = optimizer_to_flat(opt)
                tensors.update(ot)
                meta["optimizer"] = ometa
            if self.main:
                atomic_save_tensors(self.out / CKPT, tensors, meta)
        self.acc.wait_for_everyone()

    def _model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict (gathered from the shards under FSDP2: every rank must call it)."""
        return full_state(model) if self.fsdp else self.acc.unwrap_model(model).state_dict()

    def _from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A plain (unsharded, unwrapped) full-precision model holding ``state``: the teacher, and under
        FSDP2 the student before it is quantized (``deepcopy`` of a sharded model is impossible)."""
        from apsq.train.models import build_model

        with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the run's RNG alone
            m = build_model(self.cfg, weights=False)
        m.load_state_dict(state)
        return m.to(self.acc.device)

    def _plain(self, model: nn.Module, qcfg: Any) -> nn.Module:
        """An unsharded copy of a sharded model (quantized like it when ``qcfg``), for the Hugging Face
        export; the full state is gathered on every rank (a collective)."""
        import apsq

        state = full_state(model)
        with torch.random.fork_rng(devices=[]):
            from apsq.train.models import build_model

            m = build_model(self.cfg, weights=False)
        if qcfg is not None:
            apsq.quantize_(m, qcfg)
            freeze_unused_psum_scales(m)
        m.load_state_dict(state)
        return m

    # -- one stage --
    def _stage(self, stage: str, sched: ScheduleConfig, model: nn.Module, teacher: nn.Module | None,
               data: BatchSource) -> nn.Module:
        resume = self.state["stage"] == stage and bool(self.tensors)
        if resume:
            load_model_state(model, self.tensors, self.out / CKPT)
        if self.fsdp:  # steps calibrated and state loaded into the plain model: now shard, then the optimizer
            model = shard(model.to(self.acc.device))
        opt = make_optimizer(model, sched)
        start = 0
        if resume:
            if "optimizer" in self.state:
                optimizer_from_flat(opt, self.tensors, self.state["optimizer"], self.out / CKPT)
            start = self.state["step"]
            self.tensors = {}
        wrapped, wopt = (model, opt) if self.fsdp else self.acc.prepare(model, opt)
        bar = tqdm(total=sched.steps, initial=start, desc=stage, disable=not self.progress, dynamic_ncols=True)
        t0 = time.time()

        def after(step: int, parts: dict[str, torch.Tensor]) -> None:
            done = step + 1
            rec = {k: round(float(v.detach()), 6) for k, v in parts.items()}
            self.metrics.log(stage=stage, step=done, lr=wopt.param_groups[0]["lr"], sec=round(time.time() - t0, 3),
                             **rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
            ev = self.cfg.eval.every
            if ev and done % ev == 0 and done < sched.steps:
                self._eval(model, stage, done)
            if done % self.cfg.save_every == 0 or done == sched.steps:
                self._save(stage, done, model, opt)
            if self.on_step is not None:
                self.on_step(stage, done)

        run_steps(wrapped, wopt, data, sched, self.cfg, stage, teacher=teacher, start=start, rank=self.rank,
                  world=self.world, device=self.acc.device, backward=None if self.fsdp else self.acc.backward,
                  clip=None if self.fsdp else self.acc.clip_grad_norm_, after_step=after)
        bar.close()
        if sched.steps == 0 or start == sched.steps:
            self._save(stage, sched.steps, model, opt)
        if self.fsdp:
            return model
        # without the autocast wrapper accelerate's prepare puts on forward under mixed precision: the
        # next stage (and its teacher copy) must be the same module whether this stage ran in this
        # process or was loaded from a checkpoint (resume == uninterrupted)
        model = self.acc.unwrap_model(wrapped, keep_fp32_wrapper=False)
        model.__dict__.pop("_is_accelerate_prepared", None)  # else the next stage's prepare skips it (no autocast)
        return model

    def _eval(self, model: nn.Module, stage: str, step: int, data: BatchSource | None = None,
              split: str | None = None) -> float:
        """The evaluation score on ``data`` (default: the evaluation split): accuracy; for GLUE the task's
        score (the mean of its official metrics, kept in ``self.task_metrics``); for segmentation the mIoU
        (``self.seg_metrics`` holds mIoU and pixel accuracy)."""
        data, split = (self.task.eval, self.task.eval_split) if data is None else (data, split)
        if self.task.glue is not None:
            self.task_metrics = evaluate_glue(self.acc.unwrap_model(model), data, self.task.glue,
                                              self.cfg.eval.batch_size, self.rank, self.world, self.acc.device,
                                              gather=self.acc.gather, desc=f"eval {stage}", progress=self.progress,
                                              lockstep=self.fsdp)
            self.metrics.log(stage=stage, step=step, split=split, accuracy=self.task_metrics["score"],
                             glue=self.task_metrics)
            return self.task_metrics["score"]
        args = (self.cfg.eval.batch_size, self.rank, self.world, self.acc.device)

        def reduce(t: torch.Tensor) -> torch.Tensor:
            return self.acc.reduce(t, "sum")

        if self.segmentation:
            seg = self.seg_metrics = evaluate_segmentation(self.acc.unwrap_model(model), data,
                                                           self.cfg.model.num_labels, *args, reduce=reduce,
                                                           desc=f"eval {stage}", progress=self.progress)
            self.metrics.log(stage=stage, step=step, split=split, accuracy=seg["miou"],
                             pixel_accuracy=seg["pixel_accuracy"])
            return seg["miou"]
        acc = evaluate(self.acc.unwrap_model(model), data, *args, reduce=reduce, desc=f"eval {stage}",
                       progress=self.progress, lockstep=self.fsdp)
        self.metrics.log(stage=stage, step=step, split=split, accuracy=acc)
        return acc

    def run(self) -> dict[str, Any]:
        import apsq
        from apsq.data.registry import SEGMENTATION, TEXT
        from apsq.nn.transform import check_config
        from apsq.train.config import BUILTIN_MODELS
        from apsq.train.models import build_model, load_tokenizer, model_init

        cfg = self.cfg
        t_start = time.time()
        tok = None if BUILTIN_MODELS.get(cfg.model.name, TEXT) != TEXT else load_tokenizer(cfg)
        self.task = build_task(cfg, tok)
        self.task_metrics = None
        self.segmentation = BUILTIN_MODELS.get(cfg.model.name) == SEGMENTATION
        self.seg_metrics = None
        model = build_model(cfg)
        if cfg.apsq_config() is not None:  # a bad exclude pattern fails now, not after the full-precision stage
            check_config(model, cfg.apsq_config())
        init = model_init(model)
        self.metrics.truncate_after(self.state["stage"], self.state["step"])
        if init is not None and self.main:
            self.metrics.log(stage=self.state["stage"], step=self.state["step"], model_init=init)
            if self.progress:
                tqdm.write(f"{cfg.model.name}: {init}")
        # stage 1: full precision
        if self.state["stage"] == "finetune":
            init_meta: dict[str, Any] = {}
            if cfg.finetune.init:
                if cfg.finetune.steps:
                    raise APSQError("finetune.init and finetune.steps > 0 both given; set finetune.steps: 0 to reuse "
                                    "a fine-tuned model")
                t, init_meta = read_tensors(Path(cfg.finetune.init))
                load_model_state(model, t, Path(cfg.finetune.init))
            model = self._stage("finetune", cfg.finetune, model, None, self.task.train)
            fp32_acc = cached_fp32_accuracy(init_meta, cfg) if cfg.finetune.init else None
            fp32_glue = init_meta.get("fp32_glue") if fp32_acc is not None else None
            if self.state.get("fp32_accuracy") is not None:  # resumed after this stage was evaluated and
                fp32_acc = self.state["fp32_accuracy"]       # logged (killed before QAT's first checkpoint)
                fp32_glue = self.state.get("fp32_glue")
            elif (fp32_acc is None or (self.task.glue is not None and fp32_glue is None)
                  or (self.segmentation and "fp32_metrics" not in init_meta)):
                fp32_acc = self._eval(model, "finetune", cfg.finetune.steps)
                fp32_glue = self.task_metrics
                self.state["fp32_metrics"] = dict(self.seg_metrics) if self.seg_metrics is not None else {}
            else:
                self.state["fp32_metrics"] = init_meta.get("fp32_metrics", {})
                self.metrics.log(stage="finetune", step=0, split=self.task.eval_split, accuracy=fp32_acc,
                                 source=str(cfg.finetune.init))
            fp_state = self._model_state(model)
            if self.main:
                atomic_save_tensors(self.out / FP32, {f"model/{k}": v for k, v in fp_state.items()},
                                    {"fingerprint": cfg.fingerprint(), "fp32_accuracy": fp32_acc,
                                     "fp32_glue": fp32_glue, "eval_key": eval_key(cfg),
                                     **({"fp32_metrics": self.state.get("fp32_metrics", {})} if self.segmentation else {})})
            self.state["fp32_accuracy"] = fp32_acc
            self.state["fp32_glue"] = fp32_glue
            self._save("finetune", cfg.finetune.steps, model, None)
        else:
            t, _ = read_tensors(self.out / FP32)
            load_model_state(model, t, self.out / FP32)
        result: dict[str, Any] = {"fp32_accuracy": self.state["fp32_accuracy"], "eval_split": self.task.eval_split,
                                  "eval_examples": len(self.task.eval), "seed": cfg.seed, "finetune_steps": cfg.finetune.steps, "processes": self.world}
        if self.task.glue is not None:  # GLUE's official metrics; "accuracy" holds the task's score (their mean)
            result.update(glue_task=self.task.glue, fp32_glue=self.state.get("fp32_glue"))
        if self.fsdp:
            result["sharding"] = "fsdp2"
        if self.segmentation:  # "accuracy" / "fp32_accuracy" hold the mIoU
            result.update(metric="miou", model_init=init,
                          fp32_pixel_accuracy=(self.state.get("fp32_metrics") or {}).get("pixel_accuracy"))
        qcfg = cfg.apsq_config()
        if qcfg is not None:
            fp_state = self._model_state(model)
            teacher = self._from_state(fp_state).eval()  # built from the state dict, never deepcopy
            teacher.requires_grad_(False)
            if self.fsdp:
                model = self._from_state(fp_state)  # the plain student: quantize_ and calibrate before sharding
                teacher = shard(teacher)
            apsq.quantize_(model, qcfg)
            freeze_unused_psum_scales(model)
            if self.state["stage"] == "finetune":  # fresh QAT: initialise every step size
                n = len(self.task.train)
                bs = cfg.qat.batch_size
                dev = module_device(model)  # the accelerator's device after the first stage
                batches = [split_batch(self.task.train.batch(global_batch(n, bs, i, cfg.seed, "calib")), dev)[0]
                           for i in range(cfg.qat.calib_batches)]
                apsq.calibrate(model, batches)
                self.state.update(stage="qat", step=0)
            if cfg.eval.after_calibration:
                if self.state["step"] == 0:
                    self.state["calibrated_accuracy"] = self._eval(model, "qat", 0)
                result["calibrated_accuracy"] = self.state.get("calibrated_accuracy")
            model = self._stage("qat", cfg.qat, model, teacher, self.task.train)
            result.update(accuracy=self._eval(model, "qat", cfg.qat.steps), qat_steps=cfg.qat.steps,
                          apsq=qcfg.to_dict())
            if self.task.glue is not None:
                result["glue"] = self.task_metrics
            if self.seg_metrics is not None:
                result["pixel_accuracy"] = self.seg_metrics["pixel_accuracy"]
        if self.task.select is not None:  # the split knobs are chosen on (never the reported one)
            sel = cfg.eval.selection_split
            result.update(selection_split=sel, selection_accuracy=self._eval(
                model, "qat" if qcfg is not None else "finetune", cfg.qat.steps if qcfg is not None else
                cfg.finetune.steps, self.task.select, sel))
        result["replica_max_abs_diff"] = self._replica_diff(model)
        result["seconds"] = round(time.time() - t_start, 1)
        plain = self._plain(model, qcfg) if self.fsdp else model  # FSDP2: gathered on every rank
        if self.main:
            if export_hf(plain, tok, self.out / HF_EXPORT):
                result["hf_export"] = HF_EXPORT
            atomic_write_text(self.out / RESULT, json.dumps(result, indent=1))
        self.acc.wait_for_everyone()
        result["model"] = model
        return result

    def _replica_diff(self, model: nn.Module) -> float:
        """Largest difference between processes of a few float64 fingerprints of all parameters."""
        g = torch.Generator().manual_seed(0)
        vec = torch.zeros(3, dtype=torch.float64)
        for p in model.parameters():
            x = full_value(p.detach()).double().flatten().cpu()
            w = torch.rand(x.numel(), generator=g, dtype=torch.float64)
            vec += torch.stack([x.sum(), (x * x).sum(), (w * x).sum()])
        allv = self.acc.gather(vec.to(self.acc.device).unsqueeze(0)).cpu()
        return float((allv - allv[0]).abs().max()) if math.isfinite(float(allv.abs().sum())) else float("inf")


def train(cfg: TrainConfig, output: str | Path, resume: bool = False, *, on_step: StepHook | None = None,
          progress: bool = True, accelerator: Any = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) the config; returns the result dict (plus the final ``model``).

    ``on_step(stage, step)`` is called after every optimizer step (and after a checkpoint due at that step).
    A run that fails before it wrote its first checkpoint removes the output folder it created.
    """
    out = Path(output)
    created = not out.exists()
    try:
        run = _Run(cfg, out, resume, on_step, progress, accelerator)
        try:
            return run.run()
        finally:
            run.release()
    except BaseException:
        if created and out.is_dir() and int(os.environ.get("RANK", "0")) == 0 and not any(
                (out / f).exists() for f in (CKPT, FP32, RESULT)):
            shutil.rmtree(out, ignore_errors=True)  # a failed start leaves nothing behind
        raise
