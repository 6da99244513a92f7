"""``QuantLinear`` (``nn.Linear``) and ``QuantTransposedLinear`` (Hugging Face's GPT-2 ``Conv1D``) on
the layer template (:mod:`apsq.nn.layers.base`): K = ``in_features``, the input's rows times the
weight's rows, tiled along K (:func:`apsq.psum.tiling.linear_partials`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apsq.errors import APSQError
from apsq.nn.config import LayerQuantConfig
from apsq.nn.exactness import work_dtype
from apsq.nn.layers.base import Inputs, Samples, WeightedQuantLayer, exact_under_autocast
from apsq.nn.padding import valid_rows
from apsq.psum.tiling import linear_partials

__all__ = ["QuantLinear", "QuantTransposedLinear"]


class QuantLinear(WeightedQuantLayer, nn.Linear):
    """``nn.Linear`` with W/A fake quantization and tiled PSUM accumulation (K = in_features).

    Input ``[..., K]``, output ``[..., N]`` in the input's dtype. Calibration and lazy initialisation
    see the rows of real tokens only (:mod:`apsq.nn.padding`).
    """

    kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, qcfg: LayerQuantConfig,
                 check_finite: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_weighted(qcfg, check_finite, out_features, dtype, device)

    @classmethod
    def from_float(cls, mod: nn.Linear, qcfg: LayerQuantConfig, check_finite: bool = True) -> QuantLinear:
        """A quantized twin of ``mod`` sharing its weight and bias parameters (and dtype, device)."""
        q = cls(mod.in_features, mod.out_features, mod.bias is not None, qcfg=qcfg, check_finite=check_finite,
                device=mod.weight.device, dtype=mod.weight.dtype)
        q.weight = mod.weight
        q.bias = mod.bias
        return q

    def linear_weight(self) -> torch.Tensor:
        """The weight as ``[N, K]`` (``out_features x in_features``)."""
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward((x,), ("x",))

    @exact_under_autocast
    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized PSUM tiles ``[n, *x.shape[:-1], out_features]`` (no bias; float32 or wider)."""
        return linear_partials(*self._operands(x, work_dtype(x.dtype)), self.qcfg.tile)

    def _operands(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.act_quant(x.to(dtype)), self.weight_quant(self.linear_weight().to(dtype))

    # --- template hooks -------------------------------------------------------------------------
    def _k(self) -> int:
        return self.in_features

    def _reduce(self, inputs: Inputs, dtype: torch.dtype, a_step: torch.Tensor, b_step: torch.Tensor) -> torch.Tensor:
        xq, wq = self._operands(inputs[0], dtype)
        return self.psum.linear(xq, wq, self.qcfg.tile, x_step=a_step, w_step=b_step)

    def _sum_bound(self, inputs: Inputs, dtype: torch.dtype) -> float:
        """``max_row sum|x codes| * 2^(w-1)``."""
        with torch.no_grad():
            codes = self.act_quant.codes(inputs[0].detach().to(dtype).reshape(-1, self.in_features))
            row = float(codes.abs().sum(1).amax()) if codes.numel() else 0.0
        return row * 2.0 ** (self.qcfg.weight_bits - 1)

    def _calibration_items(self, inputs: Inputs) -> list[tuple[torch.Tensor, tuple[int, ...] | None]]:
        return [(valid_rows(inputs[0]), None)]  # rows of real tokens only

    def _rows(self, samples: Samples, dtype: torch.dtype) -> torch.Tensor:
        return torch.cat([s.reshape(-1, self.in_features) for _, s in samples], 0).to(dtype)

    def _operand_samples(self, samples: Samples, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rows(samples, dtype), self.linear_weight().detach().to(dtype)

    def _psum_samples(self, samples: Samples) -> torch.Tensor:
        return self.partials(self._rows(samples, work_dtype(samples[0][1].dtype)))

    def _float_forward(self, inputs: Inputs) -> torch.Tensor:
        return F.linear(inputs[0], self.linear_weight(), self.bias)

    def _with_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias


class QuantTransposedLinear(QuantLinear):
    """Hugging Face's ``Conv1D`` (GPT-2, GPT, ...): a Linear whose weight is stored ``[in, out]``
    (``y = x @ W + b``); quantized as the Linear ``W^T`` (per-channel steps per output feature)."""

    nf: int  # Conv1D's own attribute names: output and input features
    nx: int

    @classmethod
    def from_float(cls, mod: nn.Module, qcfg: LayerQuantConfig, check_finite: bool = True) -> QuantTransposedLinear:
        """A quantized twin of a ``transformers.pytorch_utils.Conv1D`` sharing its parameters."""
        weight, bias = mod.weight, mod.bias
        if not isinstance(weight, nn.Parameter) or not (bias is None or isinstance(bias, nn.Parameter)):
            raise APSQError(f"a Conv1D to quantize needs a weight [in, out] and a bias parameter; got {mod!r}")
        k, n = weight.shape
        q = cls(k, n, bias is not None, qcfg=qcfg, check_finite=check_finite, device=weight.device, dtype=weight.dtype)
        q.weight = weight
        q.bias = bias
        q.nf, q.nx = n, k
        return q

    def linear_weight(self) -> torch.Tensor:
        return self.weight.t()
