"""``QuantMatmul`` on the layer template (:mod:`apsq.nn.layers.base`): an activation x activation product
(attention's ``QK^T`` / ``AV``), both operands quantized per tensor with ``act_bits``, K = ``a``'s last
dimension (:func:`apsq.psum.tiling.matmul_partials`); calibration keeps ``(a, b)`` pairs."""

from __future__ import annotations

import torch

from apsq.errors import APSQError
from apsq.nn.config import LayerQuantConfig
from apsq.nn.exactness import work_dtype
from apsq.nn.layers.base import Inputs, QuantLayerBase, Samples, exact_under_autocast, psum_quantizer
from apsq.nn.padding import current_mask
from apsq.psum.tiling import matmul_partials
from apsq.quant.lsq import LSQQuantizer

__all__ = ["QuantMatmul", "per_channel_matmul_error"]


def per_channel_matmul_error(name: str) -> APSQError:
    """The refusal of per-channel PSUM steps on a matmul without a fixed output width (QK^T)."""
    return APSQError(
        f"matmul layer {name or '?'}: psum_granularity 'channel' needs a fixed output width, and this "
        "product's output width is the key length; use psum_granularity 'tensor' for it (an override "
        f"{{{name!r}: {{'psum_granularity': 'tensor'}}}}) or exclude it"
    )


class QuantMatmul(QuantLayerBase):
    """An activation x activation matmul (attention's ``QK^T`` or ``AV``) with tiled PSUMs.

    Both operands are quantized per tensor with ``act_bits``. ``max_k`` bounds the reduction length
    (for ``AV`` it is the sequence length), which fixes how many PSUM steps are learned.
    ``a [..., M, K] @ b [..., K, N] -> [..., M, N]`` in ``a``'s dtype.
    """

    kind = "matmul"

    def __init__(self, max_k: int, qcfg: LayerQuantConfig, check_finite: bool = True, *,
                 out_features: int | None = None, name: str = "") -> None:
        if (getattr(qcfg, "psum_granularity", "tensor") == "channel" and qcfg.mode != "none"
                and out_features is None):
            raise per_channel_matmul_error(name)
        super().__init__()
        self.max_k = max_k
        self.out_features = out_features
        """``N`` when it is fixed (attention's AV: the head dimension); None when it follows the input
        (QK^T: the key count)."""
        self.positions: tuple[str, ...] = ()
        """Axes of ``a @ b`` that are token positions (``"m"``, ``"k"``, ``"n"``): cropped to the real
        tokens of each sentence for calibration (:meth:`_pair_groups`); set by the attention hook."""
        self._setup_common(qcfg, check_finite)
        self.layer_name = name
        self.a_quant = LSQQuantizer(qcfg.act_bits)
        self.b_quant = LSQQuantizer(qcfg.act_bits)
        self.psum = psum_quantizer(self._n(), qcfg, 1 if out_features is None else out_features, -1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._forward((a, b), ("a", "b"))

    @exact_under_autocast
    def partials(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Quantized PSUM tiles ``[n, ..., M, N]`` (float32 or wider)."""
        return matmul_partials(*self._operands(a, b, work_dtype(a.dtype)), self.qcfg.tile)

    def _operands(self, a: torch.Tensor, b: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a_quant(a.to(dt)), self.b_quant(b.to(dt))

    @staticmethod
    def _pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One item per (broadcast) leading index: ``[R, M + N, K]`` holding ``a`` and ``b^T``, and
        the group key ``(M, K, N)``."""
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a3 = a.detach().expand(*lead, m, k).reshape(-1, m, k)
        b3 = b.detach().to(a.dtype).expand(*lead, k, n).reshape(-1, k, n).transpose(1, 2)
        return torch.cat([a3, b3], 1), (m, k, n)

    def _pair_groups(self, a: torch.Tensor, b: torch.Tensor) -> list[tuple[torch.Tensor, tuple[int, ...] | None]]:
        """:meth:`_pairs` of the whole batch, or -- inside a model call with a padding mask
        (:mod:`apsq.nn.padding`) and :attr:`positions` set -- of each sentence cropped to its real tokens
        along the axes in :attr:`positions` (``"m"`` rows, ``"k"`` reduction, ``"n"`` columns) whose
        length is the mask's."""
        mask = current_mask()
        if not self.positions or mask is None or a.dim() != 4 or a.shape[0] != mask.shape[0]:
            return [self._pairs(a, b)]
        s = mask.shape[1]
        groups: list[tuple[torch.Tensor, tuple[int, ...] | None]] = []
        for i in range(a.shape[0]):
            idx = mask[i].nonzero().squeeze(1).to(a.device)
            ai, bi = a[i:i + 1], (b[i:i + 1] if b.shape[0] == a.shape[0] else b)
            if "m" in self.positions and ai.shape[-2] == s:
                ai = ai.index_select(-2, idx)
            if "k" in self.positions and ai.shape[-1] == s and bi.shape[-2] == s:
                ai, bi = ai.index_select(-1, idx), bi.index_select(-2, idx)
            if "n" in self.positions and bi.shape[-1] == s:
                bi = bi.index_select(-1, idx)
            groups.append(self._pairs(ai, bi))
        return groups

    @staticmethod
    def _split(key: tuple[int, ...], items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`_pairs`: ``a [R, M, K]``, ``b [R, K, N]``."""
        m = key[0]
        return items[:, :m], items[:, m:].transpose(1, 2)

    # --- template hooks -------------------------------------------------------------------------
    def _quantizers(self) -> tuple[LSQQuantizer, LSQQuantizer]:
        return (self.a_quant, self.b_quant)

    def _k(self) -> int:
        return self.max_k

    def _reduction_length(self, inputs: Inputs) -> int:
        return inputs[0].shape[-1]

    def _rows_per_item(self, item_shape: tuple[int, ...]) -> int:
        return item_shape[0]  # rows M of one (a, b) pair; key = (M, K, N)

    def _reduce(self, inputs: Inputs, dtype: torch.dtype, a_step: torch.Tensor, b_step: torch.Tensor) -> torch.Tensor:
        aq, bq = self._operands(inputs[0], inputs[1], dtype)
        return self.psum.matmul(aq, bq, self.qcfg.tile, a_step=a_step, b_step=b_step)

    def _sum_bound(self, inputs: Inputs, dtype: torch.dtype) -> float:
        """``max|a codes| * max|b codes| * K``."""
        a, b = inputs
        with torch.no_grad():
            ca = float(self.a_quant.codes(a.detach().to(dtype)).abs().amax()) if a.numel() else 0.0
            cb = float(self.b_quant.codes(b.detach().to(dtype)).abs().amax()) if b.numel() else 0.0
        return ca * cb * a.shape[-1]

    def _calibration_items(self, inputs: Inputs) -> list[tuple[torch.Tensor, tuple[int, ...] | None]]:
        return self._pair_groups(inputs[0], inputs[1])

    def _operand_samples(self, samples: Samples, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._split(key, s) for key, s in samples]
        return (torch.cat([a.reshape(-1) for a, _ in pairs]).to(dtype),
                torch.cat([b.reshape(-1) for _, b in pairs]).to(dtype))

    def _psum_samples(self, samples: Samples) -> torch.Tensor:
        """The tiles of every kept pair; pairs with fewer tiles than the longest contribute zero tiles
        beyond their end."""
        parts = [self.partials(*self._split(key, s)) for key, s in samples]
        n = max(p.shape[0] for p in parts)
        lane = parts[0].shape[-1] if self.psum.per_channel else 1  # per-channel steps keep the output columns
        flat = [torch.cat([p.reshape(p.shape[0], -1, lane), p.new_zeros(n - p.shape[0], p[0].numel() // lane, lane)], 0)
                for p in parts]
        return torch.cat(flat, 1) if self.psum.per_channel else torch.cat(flat, 1).squeeze(-1)

    def _float_forward(self, inputs: Inputs) -> torch.Tensor:
        return inputs[0] @ inputs[1]
