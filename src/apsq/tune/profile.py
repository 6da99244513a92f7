"""Calibrate one quantized model per candidate gs and assemble any per-layer mix of them exactly.

:func:`apsq.calibrate` runs the model in full precision while each layer records its inputs, so a
layer's calibrated steps depend only on its own settings: activation and weight steps are the same
for every gs, and the PSUM steps of layer ``l`` at gs ``g`` are those of the uniform-gs-``g`` model.
A per-layer mix therefore needs no new calibration: :meth:`GsProfile.set_choice` copies each
layer's PSUM steps from the uniform model of its gs (identical to calibrating the mixed config).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from apsq.device import module_device, module_dtype, to_device
from apsq.errors import APSQError, check_int
from apsq.eval.metrics import Batch, Metrics, call_model, logits_on, metrics_of
from apsq.nn.config import APSQConfig
from apsq.nn.calibration import calibrate
from apsq.nn.transform import quant_layers, quantize_, track_stats


@dataclass
class GsProfile:
    """What :func:`profile_gs` measured, and a host model to evaluate per-layer mixes on.

    ``stats[g][layer]``: ``rel_error`` (output error vs FP, calibration data), ``saturation_rate``,
    ``n_tiles``, ``k`` of each tunable layer in the uniform-gs-``g`` model; ``uniform[g]``: its
    :class:`Metrics` on the evaluation batches.
    """

    base: APSQConfig
    gs_values: tuple[int, ...]
    layers: tuple[str, ...]
    stats: dict[int, dict[str, dict[str, float]]]
    uniform: dict[int, Metrics]
    model: nn.Module
    eval_batches: Sequence[Batch]
    fp_logits: torch.Tensor
    labels: torch.Tensor
    psum_state: dict[str, dict[int, torch.Tensor]] = field(repr=False, default_factory=dict)
    evaluations: int = 0

    def set_choice(self, choice: Mapping[str, int]) -> None:
        """Put layer ``l`` at gs ``choice[l]`` (layers not named keep the base gs)."""
        mods = dict(quant_layers(self.model))
        for name in self.layers:
            g = int(choice.get(name, self.base.gs))
            if g not in self.gs_values:
                raise APSQError(f"gs of layer {name!r} must be one of {list(self.gs_values)}, got {g}")
            m = mods[name]
            m.psum.gs = g
            m.psum.log2_scales.data.copy_(self.psum_state[name][g])
            m.qcfg = dataclasses.replace(m.qcfg, gs=g)

    def measure(self, choice: Mapping[str, int]) -> Metrics:
        """Metrics of the per-layer mix ``choice`` (one pass over the evaluation batches)."""
        self.set_choice(choice)
        self.evaluations += 1
        return metrics_of(logits_on(self.model, self.eval_batches), self.fp_logits, self.labels)


def tunable_layers(model: nn.Module) -> list[str]:
    """Quantized layers whose gs matters: APSQ mode with more than one PSUM tile."""
    return [n for n, m in quant_layers(model) if m.qcfg.enabled and m.qcfg.mode == "apsq" and m._n() > 1]


def profile_gs(
    fp_model: nn.Module,
    base: APSQConfig,
    gs_values: Sequence[int],
    calib_batches: Sequence[Any],
    eval_batches: Sequence[Batch],
    progress: Callable[[str], None] | None = None,
) -> GsProfile:
    """Quantize + calibrate ``fp_model`` once per gs in ``gs_values`` (APSQ mode), record per-layer
    statistics on the calibration batches and metrics on ``eval_batches`` ((inputs, labels) pairs).

    The copies run on ``fp_model``'s device and dtype; batches may be anywhere (moved with
    :func:`apsq.device.to_device`); logits and labels are kept on the CPU."""
    if base.mode != "apsq":
        raise APSQError(f"tune-gs needs mode 'apsq' in the base config, got {base.mode!r}")
    gs_values = tuple(sorted({check_int("gs", int(g), lo=1) for g in gs_values}))
    if not gs_values:
        raise APSQError("gs_values must name at least one group size")
    if not calib_batches or not eval_batches:
        raise APSQError("profile_gs needs at least one calibration batch and one evaluation batch")
    fp_model = copy.deepcopy(fp_model).eval()
    fp_logits = logits_on(fp_model, eval_batches)
    labels = torch.cat([y.cpu() for _, y in eval_batches])
    stats: dict[int, dict[str, dict[str, float]]] = {}
    uniform: dict[int, Metrics] = {}
    psum_state: dict[str, dict[int, torch.Tensor]] = {}
    host: nn.Module | None = None
    layers: list[str] = []
    for g in gs_values:
        if progress:
            progress(f"calibrating gs={g}")
        m = quantize_(copy.deepcopy(fp_model), base.replace(gs=g))
        calibrate(m, calib_batches)
        m.eval()
        if not layers:
            layers = tunable_layers(m)
            if not layers:
                raise APSQError("no layer has more than one PSUM tile in APSQ mode: nothing to tune")
        device, dtype = module_device(m), module_dtype(m)
        with torch.no_grad(), track_stats(m) as st:
            for b in calib_batches:
                call_model(m, to_device(b, device, dtype))
        mods = dict(quant_layers(m))
        by_name = {s.name: s for s in st}  # by layer_name: an attention matmul's is <attn>.qk_matmul, not its module path
        found = {n: by_name[mods[n].layer_name or n] for n in layers}
        stats[g] = {n: {"rel_error": s.rel_error, "saturation_rate": s.saturation_rate, "n_tiles": s.n_tiles,
                        "k": s.k} for n, s in found.items()}
        for n in layers:
            psum_state.setdefault(n, {})[g] = mods[n].psum.log2_scales.detach().clone()
        uniform[g] = metrics_of(logits_on(m, eval_batches), fp_logits, labels)
        if host is None:
            host = m
    assert host is not None  # gs_values is not empty (checked above)
    prof = GsProfile(base.replace(gs=gs_values[0]), gs_values, tuple(layers), stats, uniform, host, eval_batches,
                     fp_logits, labels, psum_state)
    return prof
