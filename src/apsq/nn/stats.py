"""Per-layer statistics a user can print: tiles, PSUM saturation, output error vs full precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from apsq.quant.ops import qrange, round_half_up


@dataclass
class LayerStats:
    """Running statistics of one quantized layer over the batches seen while tracking.

    Attributes:
        name: module path in the model.
        kind: ``linear`` / ``conv2d`` / ``matmul``.
        mode, gs: PSUM accumulation settings.
        k: reduction length K; n_tiles: ``ceil(K / tile)``.
        psum_values: number of PSUM values quantized; psum_saturated: how many hit the clamp.
        err_sq, ref_sq: ``sum (Y_q - Y_fp)^2`` and ``sum Y_fp^2`` (Y_fp: unquantized operands).
    """

    name: str
    kind: str
    mode: str
    gs: int
    k: int
    n_tiles: int
    psum_values: int = 0
    psum_saturated: int = 0
    err_sq: float = 0.0
    ref_sq: float = 0.0

    @property
    def saturation_rate(self) -> float:
        """Fraction of quantized PSUM values that saturated."""
        return self.psum_saturated / self.psum_values if self.psum_values else 0.0

    @property
    def rel_error(self) -> float:
        """Relative output error ``||Y_q - Y_fp|| / ||Y_fp||``."""
        return (self.err_sq / self.ref_sq) ** 0.5 if self.ref_sq > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(saturation_rate=self.saturation_rate, rel_error=self.rel_error)
        return d


class StatsRecorder:
    """Callable attached to a PSUM quantizer: counts saturated codes (``observe(value, scale)``)."""

    def __init__(self, stats: LayerStats, bits: int) -> None:
        self.stats = stats
        self.qn, self.qp = qrange(bits)

    def __call__(self, value: torch.Tensor, scale: torch.Tensor) -> None:
        code = round_half_up(value / scale)
        self.stats.psum_values += value.numel()
        self.stats.psum_saturated += int(((code < self.qn) | (code > self.qp)).sum())

    @torch.no_grad()
    def add_error(self, y_q: torch.Tensor, y_fp: torch.Tensor) -> None:
        self.stats.err_sq += float(((y_q.double() - y_fp.double()) ** 2).sum())
        self.stats.ref_sq += float((y_fp.double() ** 2).sum())
