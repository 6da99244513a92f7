"""APSQ models in Hugging Face transformers: ``save_pretrained`` / ``from_pretrained`` and ``Trainer``.

Importing this module registers the quantization method ``"apsq"`` with transformers
(``register_quantization_config`` / ``register_quantizer``, as torchao's ``TorchAoConfig`` and ModelOpt
do), so:

* ``apsq.quantize_(model, cfg)`` on a Hugging Face model writes ``config.quantization_config =
  {"quant_method": "apsq", "apsq": cfg}``; ``model.save_pretrained(path)`` saves every step size, the
  ``initialized`` flags and each layer's settings record (``<layer>._extra_state``) beside the weights;
* ``AutoModel*.from_pretrained(path)`` rebuilds the quantized layers from that config before the weights
  load (:class:`APSQHfQuantizer`) and reloads the steps: outputs bit-identical to the saved model;
* ``from_pretrained(float_path, quantization_config=APSQHfConfig(cfg))`` quantizes a float checkpoint
  on loading (steps not initialised: calibrate, or lazy initialisation on the first batch).

Loading an apsq checkpoint *without* this module imported gives transformers' "unknown quantization
type" warning and a float model; ``apsq.quantize_`` then refuses to quantize it again (its trained steps
would be re-initialised silently) and names this module.

:class:`APSQTrainer` is ``transformers.Trainer`` with apsq's training recipe (see its docstring);
:class:`StepSizeWarning` is what a plain ``Trainer`` on an APSQ model warns once.

Sources: ``transformers/quantizers/{base,auto,quantizer_torchao}.py``; ModelOpt's ``QATTrainer``
(``modelopt/torch/quantization/plugins/transformers_trainer.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.trainer_utils import TrainOutput
from transformers.utils.quantization_config import QuantizationConfigMixin

from apsq.device import module_device, module_dtype, to_device
from apsq.errors import APSQError
from apsq.nn import APSQConfig, calibrate, quant_layers, quantize_
from apsq.nn.transform import QUANT_METHOD
from apsq.train.config import DistillConfig, ScheduleConfig, TrainConfig
from apsq.nn.optim_check import StepSizeWarning
from apsq.train.losses import distill_loss, logits_of
from apsq.train.optim import clip_grad_norms_, lr_factor

__all__ = ["APSQHfConfig", "APSQHfQuantizer", "APSQTrainer", "StepSizeWarning", "QUANT_METHOD"]


class APSQHfConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of an APSQ model: ``{"quant_method": "apsq", "apsq": <APSQConfig dict>}``.

    Args:
        apsq: an :class:`apsq.APSQConfig` or its mapping (``APSQConfig.to_dict()``); ``None`` is the default
            config. Validated here (:class:`APSQError` naming the bad field).
    """

    def __init__(self, apsq: APSQConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.pop("quant_method", None)
        if kwargs:
            raise APSQError(f"APSQHfConfig: unknown keys {sorted(kwargs)}; allowed: quant_method, apsq")
        cfg = apsq if isinstance(apsq, APSQConfig) else APSQConfig.from_dict(dict(apsq or {}))
        # transformers annotates quant_method as its built-in QuantizationMethod enum, yet its own
        # register_quantization_config(method: str) admits methods outside it, like "apsq"
        self.quant_method = QUANT_METHOD  # type: ignore[assignment]
        self.apsq = cfg.to_dict()

    def apsq_config(self) -> APSQConfig:
        """The :class:`apsq.APSQConfig` this config describes."""
        return APSQConfig.from_dict(dict(self.apsq))

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, "apsq": dict(self.apsq)}


class APSQHfQuantizer(HfQuantizer):
    """transformers' hook into ``from_pretrained``: :func:`apsq.quantize_` on the model skeleton (meta
    device) before the weights load, so the checkpoint's steps, flags and settings records load into the
    quantized layers (a settings record that differs is an :class:`APSQError`). A float checkpoint
    (``pre_quantized`` false) gets uninitialised steps afterwards (calibrate, or lazy initialisation)."""

    requires_calibration = False

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        return None

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        qc = self.quantization_config
        if not isinstance(qc, APSQHfConfig):
            raise APSQError(f"APSQHfQuantizer: quantization_config must be an APSQHfConfig, got {type(qc).__name__}")
        before = set(model.state_dict())
        quantize_(model, qc.apsq_config())
        if not self.pre_quantized:
            # a float checkpoint has no steps: expected, so transformers' load report must not list every
            # step, flag and settings record as MISSING ("newly initialized ... consider training")
            added = set(model.state_dict()) - before
            ignore = getattr(model, "_keys_to_ignore_on_load_missing", None) or set()
            setattr(model, "_keys_to_ignore_on_load_missing",  # noqa: B010  (a transformers attribute)
                    set(ignore) | {rf"^{re.escape(k)}$" for k in added})
        return model

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        if not self.pre_quantized:  # the steps were missing keys, materialised uninitialised: reset them
            reset_steps(model)
        return model

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True


@torch.no_grad()
def reset_steps(model: nn.Module) -> None:
    """Every step of every quantized layer back to its state right after :func:`apsq.quantize_`
    (``log2`` 0, not initialised; PSUM steps of ``mode none`` count as initialised)."""
    from apsq.nn.psum_quantizer import PSUMQuantizer
    from apsq.quant.lsq import LSQQuantizer

    for m in model.modules():
        if isinstance(m, LSQQuantizer):
            m.log2_scale.zero_()
            m.initialized.fill_(False)
        elif isinstance(m, PSUMQuantizer):
            m.log2_scales.zero_()
            m.initialized.fill_(m.mode == "none")


def _register() -> None:
    """Register ``"apsq"`` with transformers (idempotent: a re-import keeps the first registration)."""
    AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(QUANT_METHOD, APSQHfConfig)
    AUTO_QUANTIZER_MAPPING.setdefault(QUANT_METHOD, APSQHfQuantizer)


_register()


# --- Trainer --------------------------------------------------------------------------------------
class APSQTrainer(Trainer):
    """``transformers.Trainer`` with apsq's QAT recipe -- the same optimizer, schedule, clipping and
    losses as ``apsq train`` (:func:`apsq.train.loop.run_steps`), so the step sizes learn.

    * Optimizer: :func:`apsq.train.make_optimizer` (the library's one rule, ``param_groups``):
      weights at ``args.learning_rate`` with ``args.weight_decay``; biases and norms without decay; the
      ``log2`` step sizes in their own group at ``scale_lr`` (default 0.2), ``eps`` 1e-20, no decay.
    * Schedule: :func:`apsq.train.lr_factor` (linear warm-up over ``args.warmup_steps`` -- a count,
      or a fraction when < 1 -- then linear decay to 0), per group.
    * Clipping: weights and step sizes clipped apart (:func:`apsq.train.clip_grad_norms_`, each at
      norm 1) right before every optimizer step; Trainer's own global clipping (``max_grad_norm``) is
      turned off, since it would scale the step sizes' small gradients by the weights' norm.
    * Calibration: before the first step, if any step is not initialised (a freshly quantized model),
      :func:`apsq.calibrate` on the first ``calibration_batches`` training batches (labels dropped).
      A model whose steps are initialised (loaded from a checkpoint, calibrated, resumed) is never
      re-calibrated.
    * Distillation (``teacher``, optional): the loss of :func:`apsq.train.distill_loss` with
      ``distill`` (:class:`apsq.train.config.DistillConfig`) against the frozen teacher. Classifier
      logits ``[B, C]`` use it as ``apsq train`` does; token logits ``[B, S, V]`` (causal LMs) use its KD
      term over the real tokens (``attention_mask``) plus ``ce_weight`` times the model's own loss.
      Without a teacher the model's own loss (``labels`` in the batch) is minimised.

    Args:
        model, args, ...: as ``transformers.Trainer`` (an ``optimizers`` pair replaces the optimizer and
            schedule above: then you own the rule).
        teacher: frozen full-precision model for distillation (moved to the model's device).
        distill: the distillation weights and temperature (default ``DistillConfig()``: KD only, T = 2).
        scale_lr: learning rate of the step sizes (default ``QATConfig().scale_lr``).
        calibration_batches: training batches for calibration (0: never calibrate here).

    Raises:
        APSQError: the model has no quantized layer; ``calibration_batches`` < 0.
    """

    def __init__(self, *args: Any, teacher: nn.Module | None = None, distill: DistillConfig | None = None,
                 scale_lr: float | None = None, calibration_batches: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not list(quant_layers(self._model())):
            raise APSQError("APSQTrainer: the model has no quantized layer; call apsq.quantize_(model, config) "
                            "first (or load it with from_pretrained and an APSQHfConfig)")
        if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 0:
            raise APSQError(f"APSQTrainer: calibration_batches must be an integer >= 0, got {calibration_batches!r}")
        from apsq.train.config import QATConfig

        if teacher is not None:
            student = {id(p) for p in self._model().parameters()}
            if teacher is self._model() or any(id(p) in student for p in teacher.parameters()):
                raise APSQError(
                    "APSQTrainer: the teacher shares parameters with the model it would teach (apsq.quantize_ "
                    "quantizes in place: after `qmodel = apsq.quantize_(fp_model, cfg)` both names are one "
                    "model); freezing it would freeze the student. Pass a separate float model: "
                    "teacher = copy.deepcopy(fp_model) before quantize_, or load it again")
        self.teacher = teacher
        self.distill_config = TrainConfig(distill=distill or DistillConfig())
        self.scale_lr = QATConfig().scale_lr if scale_lr is None else float(scale_lr)
        self.calibration_batches = calibration_batches
        self.args.max_grad_norm = 0.0  # clipped per group in the optimizer's step pre-hook instead
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def _model(self) -> nn.Module:
        """``self.model``, which ``Trainer.__init__`` sets (from ``model`` or ``model_init``)."""
        if self.model is None:
            raise APSQError("APSQTrainer: no model; pass model= (or model_init=)")
        return self.model

    def schedule(self, num_training_steps: int) -> ScheduleConfig:
        """The :class:`ScheduleConfig` equivalent of this Trainer's arguments for ``num_training_steps``."""
        warm = self.args.get_warmup_steps(num_training_steps)
        frac = warm / num_training_steps if num_training_steps else 0.0
        while frac < 1 and int(frac * num_training_steps) < warm:  # lr_factor takes int(warmup * steps)
            frac = float(torch.nextafter(torch.tensor(frac, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)))
        return ScheduleConfig(steps=num_training_steps, batch_size=max(1, self.args.per_device_train_batch_size),
                              lr=self.args.learning_rate, scale_lr=self.scale_lr,
                              weight_decay=self.args.weight_decay, warmup=min(frac, 1.0))

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            from apsq.train.optim import make_optimizer

            opt_model = self._model() if model is None else model
            opt = make_optimizer(opt_model, self.schedule(max(1, self.args.max_steps)))
            opt.register_step_pre_hook(_clip_before_step)
            self.optimizer = opt
        return self.optimizer

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is None:
            sched = self.schedule(num_training_steps)
            opt = optimizer or self.optimizer
            if opt is None:
                raise APSQError("APSQTrainer.create_scheduler: no optimizer; call create_optimizer first or pass one")
            for g in opt.param_groups:  # LambdaLR multiplies each group's initial rate: its base_lr
                g["lr"] = g.get("base_lr", g["lr"])
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_factor(t, sched))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        """Calibrate (when some step is not initialised, see the class doc), then ``Trainer.train``."""
        model = self._model()
        if self.calibration_batches and any(m.needs_init() for _, m in quant_layers(model)):
            calibrate(model, _same_on_every_rank(_first_batches(self.get_train_dataloader(), self.calibration_batches)))
        if self.teacher is not None:
            self.teacher.to(module_device(model))
        return super().train(*args, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if self.teacher is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        d = self.distill_config.distill
        hidden = d.hidden_weight > 0
        labels = inputs.get("labels")
        extra = {"output_hidden_states": True} if hidden else {}
        out = model(**inputs, **extra)
        with torch.no_grad():
            tin = to_device({k: v for k, v in inputs.items() if k != "labels"}, module_device(self.teacher),
                            module_dtype(self.teacher))
            tout = self.teacher(**tin, **extra)
        s = logits_of(out)
        if s.dim() == 2:  # a classifier: exactly apsq train's loss
            if labels is None:  # distill_loss reads the task (class indices / regression targets) off them
                raise APSQError("APSQTrainer: a teacher with classifier logits [B, C] needs 'labels' in every batch "
                                f"(the batch has {sorted(inputs)})")
            loss = distill_loss(out, tout, labels, self.distill_config)["loss"]
        else:  # tokens: KD over the real positions, plus the model's own (shifted) loss
            if hidden:
                raise APSQError("APSQTrainer: distill.hidden_weight > 0 is supported for classifier logits [B, C] "
                                f"only; this model gives logits of shape {tuple(s.shape)} (set hidden_weight: 0)")
            keep = inputs.get("attention_mask")
            keep = torch.ones(s.shape[:-1], dtype=torch.bool, device=s.device) if keep is None else keep.bool()
            kd_only = TrainConfig(distill=d.model_copy(update={"ce_weight": 0.0, "hidden_weight": 0.0}))
            rows = torch.zeros(int(keep.sum()), dtype=torch.long, device=s.device)
            loss = distill_loss(s[keep], logits_of(tout)[keep], rows, kd_only)["loss"]
            if d.ce_weight > 0:
                loss = loss + d.ce_weight * out.loss
        return (loss, out) if return_outputs else loss


def _clip_before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    clip_grad_norms_(opt.param_groups)


def _same_on_every_rank(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Under ``torch.distributed`` (``torchrun`` / ``accelerate launch``: each rank's data loader yields its
    own share) every rank's batches, gathered in step order (step 1 of rank 0, of rank 1, ..., step 2 ...):
    the data of the first global steps, the same list on every rank, as :func:`apsq.calibrate` requires
    there. One process: ``batches`` as given."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return batches
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, [to_device(b, "cpu") for b in batches])
    steps = max(len(g) for g in gathered)
    return [g[i] for i in range(steps) for g in gathered if i < len(g)]


def _first_batches(loader: Iterable[Any], n: int) -> list[dict[str, Any]]:
    out = []
    for batch in loader:
        out.append({k: v for k, v in dict(batch).items() if k != "labels"})
        if len(out) == n:
            break
    return out
