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

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from apsq.device import module_device, module_dtype, to_device
from apsq.errors import APSQError
from apsq.nn import APSQConfig, calibrate, quant_layers, quantize_
from apsq.nn.transform import QUANT_METHOD
from apsq.train.config import DistillConfig, ScheduleConfig, TrainConfig
from apsq.train.loop import clip_grad_norms_, distill_loss, is_step_size, logits_of, lr_factor, param_groups

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
        self.quant_method = QUANT_METHOD
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
        quantize_(model, self.quantization_config.apsq_config())
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
