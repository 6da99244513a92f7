"""``calibrate(model, batches)``: set every step size of a quantized model from a few batches.

It runs the model once in full precision while each quantized layer (swapped in by
:func:`apsq.nn.transform.quantize_`) keeps a subsample of its inputs, then sets the activation, weight
and PSUM steps from them; it also reports the reductions that ran outside every quantized layer
(:mod:`apsq.nn.float_reductions`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from apsq.device import call_model, module_device, module_dtype, to_device
from apsq.errors import APSQError, check_int
from apsq.nn.attention import SUPPORTED_ATTENTION
from apsq.nn.float_reductions import FloatReduction, watch_float_reductions
from apsq.nn.layers import DEFAULT_CALIB_ROWS
from apsq.nn.sharding import check_same_calibration, full_parameters, reshard
from apsq.nn.transform import QuantizeReport, SkippedLayer, quant_layers

__all__ = ["calibrate"]


def _calibration_forward(model: nn.Module, forward: Callable[[nn.Module, Any], Any], batch: Any) -> Any:
    """``forward(model, batch)``; the default forward's ``model(*batch)`` on a tuple the model does not take
    (a DataLoader's ``(inputs, labels)`` pairs) is an :class:`APSQError` saying how to pass it."""
    try:
        return forward(model, batch)
    except TypeError as exc:
        if forward is not call_model or not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise
        raise APSQError(
            f"calibrate: model(*batch) failed on a batch of {len(batch)} items ({exc}); a DataLoader of (inputs, "
            "labels) pairs? pass forward=lambda model, batch: model(batch[0]) (or batches of inputs only); the "
            "default forward calls model(**batch) on a mapping, model(*batch) on a tuple / list, model(batch) "
            "otherwise. No step was changed") from exc


def _nothing_quantized(model: nn.Module) -> APSQError:
    report = getattr(model, "apsq_report", None)
    if isinstance(report, QuantizeReport):
        if report.skipped:
            return APSQError(
                f"calibrate: apsq.quantize_ swapped no layer of this model; it left {len(report.skipped)} in full "
                f"precision: {report.describe()}. Change exclude / layer_types, or quantize a model with "
                "nn.Linear / nn.Conv1d / nn.Conv2d / transformers Conv1D layers"
            )
        return APSQError("calibrate: apsq.quantize_ found no layer with a reduction in this model; nothing to calibrate")
    return APSQError("calibrate: the model has no quantized layers (call apsq.quantize_(model, config) first)")


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] = call_model,
    max_rows: int = DEFAULT_CALIB_ROWS,
) -> nn.Module:
    """Initialise every step size from a few batches.

    The batches (moved to the model's device, floating tensors cast to its dtype:
    :func:`apsq.device.to_device`) run once through the model in full precision while each quantized
    layer keeps a subsample of its inputs: the ``max_rows`` rows (tokens / pixels; whole images for
    convolutions) with the smallest content keys over *all* batches (:mod:`apsq.nn.sampling`), so
    the steps depend on the data, not on its order or batching. Then activation and weight steps are
    set to their MSE-optimal powers of two and the PSUM steps greedily along the accumulation
    (:meth:`~apsq.nn.psum_quantizer.PSUMQuantizer.init_from`). Layers no batch reached keep lazy
    initialisation. The model's train/eval mode is restored, also on error.

    Under ``torch.distributed`` it is a collective (:mod:`apsq.nn.sharding`): every rank passes the
    same batches (checked), and the steps equal a single process's, before or after FSDP2's
    ``fully_shard`` (sharded parameters are gathered per layer and the steps written into the shards).

    Raises:
        APSQError: no quantized layer (saying what :func:`~apsq.nn.transform.quantize_` skipped and why), no batch, a
            layer whose calibration inputs hold no rows, or (distributed) ranks that saw different
            batches -- before any step is changed.
    """
    check_int("max_rows", max_rows, lo=1)
    layers = [m for _, m in quant_layers(model)]
    if not layers:
        raise _nothing_quantized(model)
    device, dtype = module_device(model), module_dtype(model)
    was_training = model.training
    model.eval()
    try:
        for m in layers:
            m.start_calibration(max_rows)
        seen = 0
        report = getattr(model, "apsq_report", None)
        skipped = [s.name for s in report.skipped] if isinstance(report, QuantizeReport) else []
        with watch_float_reductions(model, layers, skipped) as watch:
            for batch in batches:
                _calibration_forward(model, forward, to_device(batch, device, dtype))
                seen += 1
        if seen == 0:
            raise APSQError("calibrate: batches was empty; give at least one batch")
        check_same_calibration(layers)  # under torch.distributed: every rank saw the same data
        called = [m for m in layers if m.calibration_calls]
        empty = [m.layer_name or type(m).__name__ for m in called if m.calibration_rows == 0]
        if empty:
            raise APSQError(
                f"calibrate: the calibration batches hold no rows for layer(s) {', '.join(empty[:6])}"
                f"{' ...' if len(empty) > 6 else ''} (empty inputs); give batches with at least one row"
            )
        for m in called:
            with full_parameters(m):  # FSDP2 / DTensor shards: gathered, steps written back into the shards
                m.finish_calibration()
        _report_float_reductions(model, watch.reductions())
    finally:
        for m in layers:
            m.stop_calibration()
        reshard(model)  # FSDP2 keeps the root unsharded after a forward: give back the sharded parameters
        model.train(was_training)
    return model


def _report_float_reductions(model: nn.Module, found: list[FloatReduction]) -> None:
    """Add the reductions calibration saw outside every quantized layer to ``model.apsq_report.skipped``
    (each name once) and warn once naming them (:mod:`apsq.nn.float_reductions`)."""
    report = getattr(model, "apsq_report", None)
    if not found or not isinstance(report, QuantizeReport):
        return
    known = {s.name for s in report.skipped}
    new = [SkippedLayer(f.name, f.module_type or type(model).__name__,
                        f"torch {f.op} in this module's forward ({f.calls} call(s) in calibration) runs in full "
                        "precision: apsq swaps nn.Linear / nn.Conv1d / nn.Conv2d / GPT-2 Conv1D and hooks the "
                        f"attention of {', '.join(SUPPORTED_ATTENTION)}; rewrite it with nn.Linear (or one of those "
                        "attention classes) to quantize it, else it stays in full precision (the energy model "
                        "prices it at the INT32 baseline)")
           for f in found if f.name not in known]
    if not new:
        return
    model.apsq_report = replace(report, skipped=report.skipped + tuple(new))  # type: ignore[assignment]  # a plain attribute, as quantize_ sets it
    names = ", ".join(f"{s.name} ({s.type})" for s in new[:6]) + (f" and {len(new) - 6} more" if len(new) > 6 else "")
    warnings.warn(f"calibrate: {len(new)} reduction(s) ran in full precision outside every quantized layer: {names}; "
                  "their PSUMs are not quantized (why and what to do: model.apsq_report.skipped)",
                  UserWarning, stacklevel=4)  # the caller of calibrate (under torch.no_grad's wrapper)
