"""The accumulator-aware baseline: brevitas A2Q / A2Q+ weight quantizers on the same model and task.

A2Q (Colbert et al., ICCV 2023) bounds each output channel's integer weight l1-norm so that a
``P``-bit accumulator can never overflow for ``N``-bit inputs; A2Q+ (2024) zero-centres the weights
and relaxes the bound. Here every ``nn.Linear`` / ``nn.Conv2d`` (except excluded heads) becomes a brevitas
``QuantLinear`` / ``QuantConv2d`` with ``Int8AccumulatorAwareWeightQuant`` (A2Q) or
``Int8AccumulatorAwareZeroCenterWeightQuant`` (A2Q+) at ``weight_accumulator_bit_width = P`` and an
8-bit per-tensor input quantizer (``Int8ActPerTensorFloat``): W8A8 with a P-bit accumulator.

All variants, APSQ included, are trained by the same short QAT + KD loop (:func:`qat_kd`), so the
comparison differs only in the quantizer.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from apsq.device import module_device, module_dtype, to_device
from apsq.errors import APSQError, check_int, check_str_list
from apsq.eval.metrics import Metrics, logits_on, metrics_of
from apsq.eval.setup import Setup
from apsq.train.config import APSQSection


def a2q_quantize_(model: nn.Module, acc_bits: int, plus: bool = False, exclude: Sequence[str] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` not matching ``exclude`` (fnmatch on module names) in
    place; each brevitas layer is made on the replaced layer's device and dtype."""
    exclude = check_str_list("exclude", exclude)  # a single pattern string is one pattern, not its letters
    import brevitas.nn as qnn
    from brevitas.quant.scaled_int import (
        Int8AccumulatorAwareWeightQuant,
        Int8AccumulatorAwareZeroCenterWeightQuant,
        Int8ActPerTensorFloat,
    )

    check_int("acc_bits", acc_bits, lo=2, hi=64)
    wq = Int8AccumulatorAwareZeroCenterWeightQuant if plus else Int8AccumulatorAwareWeightQuant
    targets = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)
               and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not targets:
        raise APSQError("a2q_quantize_: the model has no nn.Linear / nn.Conv2d to quantize")
    kw = {"weight_quant": wq, "weight_accumulator_bit_width": acc_bits, "input_quant": Int8ActPerTensorFloat,
          "return_quant_tensor": False}
    for name, lin in targets:
        if isinstance(lin, nn.Linear):
            q = qnn.QuantLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, **kw)
        else:
            if lin.padding_mode != "zeros":
                raise APSQError(f"a2q_quantize_: conv {name!r} uses padding_mode={lin.padding_mode!r}; only 'zeros'")
            q = qnn.QuantConv2d(lin.in_channels, lin.out_channels, lin.kernel_size, stride=lin.stride,
                                padding=lin.padding, dilation=lin.dilation, groups=lin.groups,
                                bias=lin.bias is not None, **kw)
        q.to(device=lin.weight.device, dtype=lin.weight.dtype)
        q.load_state_dict(lin.state_dict(), strict=False)  # weight/bias; quantizer state initialises itself
        a2q_init_scales_(q, plus)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], q)
    return model


@torch.no_grad()
def a2q_init_scales_(q: Any, plus: bool, input_bits: int = 8) -> None:
    """Post-training start for A2Q: raise each channel's post-scale ``s`` to ``||w||_1 / T``.

    brevitas initialises ``s = max|w| / 127`` and clamps the norm ``g/s`` at the l1 bound ``T``, which
    shrinks every dequantized weight by ``T·s/||w||_1`` (50x for K = 384 at P = 16: the output
    collapses). With ``s >= ||w||_1 / T`` the clamp is inactive at start: the weights keep their
    magnitude and the integer l1-norm ``||w||_1 / s <= T`` still meets the accumulator bound.

    ``q``: a brevitas ``QuantLinear`` with an A2Q weight quantizer (brevitas ships no types: ``Any``).
    """
    tq = q.weight_quant.tensor_quant
    w = q.weight.detach().flatten(1)
    if plus:
        w = w - w.mean(1, keepdim=True)
    d_w = w.abs().sum(1, keepdim=True)
    t = tq.pre_scaling_impl.calc_max_l1_norm(torch.tensor(float(input_bits)), True)
    for impl in (tq.scaling_impl, tq.pre_scaling_impl.scaling_impl):
        v = impl.value  # log2 of s, [out, 1]
        v.copy_(torch.maximum(v, torch.log2(d_w / t).view_as(v)))


@torch.no_grad()
def a2q_calibrate(model: nn.Module, batches: Sequence[Any]) -> None:
    """Collect the input quantizers' statistics (brevitas calibration mode) on ``batches`` (moved to
    the model's device and dtype with :func:`apsq.device.to_device`)."""
    from brevitas.graph.calibrate import calibration_mode

    model.eval()
    device, dtype = module_device(model), module_dtype(model)
    with calibration_mode(model):
        for b in batches:
            b = to_device(b, device, dtype)
            model(**b) if isinstance(b, dict) else model(b)


def qat_kd(model: nn.Module, teacher: nn.Module, setup: Setup, steps: int,
           progress: Callable[[str], None] | None = None) -> nn.Module:
    """``steps`` steps of KD (+CE) from ``teacher`` with the setup config's ``qat``/``distill`` settings,
    through the library's one training loop (:func:`apsq.train.loop.run_steps`) and optimizer rule
    (:func:`apsq.train.make_optimizer`); quantizer parameters (brevitas names them with
    ``quant``, ours ``log2_scale``) get the step-size group (``qat.scale_lr``).

    Runs on ``model``'s device (the teacher is moved there); each batch reaches the student and the
    teacher in their own floating dtypes (:func:`apsq.device.to_device`). Returns ``model`` in eval mode."""
    from apsq.train.loop import run_steps
    from apsq.train.optim import is_step_size, make_optimizer

    cfg = setup.cfg
    sched = cfg.qat.model_copy(update={"steps": steps})
    device, dtype = module_device(model), module_dtype(model)
    opt = make_optimizer(model, sched, step_size=lambda n: "quant" in n or is_step_size(n))

    def inputs_of(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        moved = to_device(dict(batch), device, dtype)
        return moved, moved.pop("labels")

    def after(step: int, parts: dict[str, torch.Tensor]) -> None:
        if progress and (step + 1) % 10 == 0:
            progress(f"  step {step + 1}/{steps} loss {float(parts['loss'].detach()):.4f}")

    run_steps(model, opt, setup.task.train, sched, cfg, "qat", teacher=teacher, device=device,
              inputs_of=inputs_of, after_step=after)
    model.eval()
    return model


def build_variant(setup: Setup, spec: dict[str, Any]) -> nn.Module:
    """A quantized, calibrated copy of the setup's FP32 model for ``spec``:
    ``{"kind": "a2q", "acc_bits": P, "plus": bool}`` or ``{"kind": "apsq", "apsq": APSQSection}`` (or an
    :class:`apsq.APSQConfig` mapping)."""
    import apsq

    m = copy.deepcopy(setup.model)
    q = setup.cfg.apsq  # the config's exclude when it gives one, else the classifier
    exclude = q.exclude if q is not None and "exclude" in q.model_fields_set else ("classifier",)
    if spec["kind"] == "a2q":
        a2q_quantize_(m, int(spec["acc_bits"]), bool(spec.get("plus", False)), exclude)
        a2q_calibrate(m, setup.calib)
    elif spec["kind"] == "apsq":
        apsq.quantize_(m, APSQSection.model_validate(spec["apsq"]).to_apsq_config())
        from apsq.train.optim import freeze_unused_psum_scales

        freeze_unused_psum_scales(m)
        apsq.calibrate(m, setup.calib)
    else:
        raise APSQError(f"variant kind must be 'a2q' or 'apsq', got {spec['kind']!r}")
    return m


def run_a2q_study(setup: Setup, specs: dict[str, dict[str, Any]], qat_steps: int,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """PTQ (calibrated) and QAT metrics of every variant, all through the same loop."""
    fp = logits_on(setup.model, setup.eval)
    labels = torch.cat([y.cpu() for _, y in setup.eval])
    teacher = copy.deepcopy(setup.model).eval().requires_grad_(False)
    out: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        if progress:
            progress(f"{name}: calibrate")
        m = build_variant(setup, spec)
        ptq: Metrics = metrics_of(logits_on(m, setup.eval), fp, labels)
        out[name] = {"spec": spec_record(spec), "ptq": ptq.to_dict()}
        if qat_steps > 0:
            if progress:
                progress(f"{name}: QAT {qat_steps} steps")
            qat_kd(m, teacher, setup, qat_steps, progress)
            out[name]["qat"] = metrics_of(logits_on(m, setup.eval), fp, labels).to_dict()
    return out


def spec_record(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` as the study's JSON records it (an APSQ variant: the ``apsq`` keys it gives)."""
    if "apsq" not in spec:
        return dict(spec)
    return {**spec, "apsq": APSQSection.model_validate(spec["apsq"]).model_dump(mode="json")}


def a2q_specs(base: APSQSection, acc_bits: tuple[int, ...], gs: int) -> dict[str, dict[str, Any]]:
    """The study's variants: W8A8 with exact INT32 PSUMs and APSQ ``gs`` INT8 (from the config's ``apsq``
    settings ``base``, its tile and exclusions kept), A2Q and A2Q+ at each accumulator width."""
    keep = base.without("mode", "gs", "psum_bits", "acc_bits")
    specs: dict[str, dict[str, Any]] = {
        "w8a8_int32": {"kind": "apsq", "apsq": keep.variant(mode="none")},
        f"apsq_gs{gs}_int8": {"kind": "apsq", "apsq": keep.variant(mode="apsq", gs=gs, psum_bits=8)},
    }
    for p in acc_bits:
        specs[f"a2q_acc{p}"] = {"kind": "a2q", "acc_bits": p, "plus": False}
        specs[f"a2q+_acc{p}"] = {"kind": "a2q", "acc_bits": p, "plus": True}
    return specs


def energy_of(workload, spec: dict[str, Any], dataflow: str, override_tile: bool = False) -> dict[str, float]:
    """A2Q: the baseline dataflow with stored PSUMs ``acc_bits`` wide; APSQ / W8A8: as configured (its
    ``tile`` checked against the array's rows, :func:`apsq.hw.energy.resolve_tile`)."""
    from apsq.hw.energy import evaluate

    ref = evaluate(workload, dataflow, "none", 1, 8)
    if spec["kind"] == "a2q":
        r = evaluate(workload, dataflow, "none", 1, 8, baseline_bits=int(spec["acc_bits"]))
    else:
        a = APSQSection.model_validate(spec["apsq"])
        r = evaluate(workload, dataflow, a.mode, a.gs, a.psum_bits, tile=a.model_dump().get("tile"),
                     override_tile=override_tile)
    return {"total_uj": r.total_pj / 1e6, "psum_uj": r.psum_pj / 1e6, "reduction_vs_int32": 1 - r.total_pj / ref.total_pj}


def fp32_accuracy(setup: Setup) -> float:
    """Accuracy of the setup's full-precision model on its evaluation batches."""
    labels = torch.cat([y.cpu() for _, y in setup.eval])
    return float((logits_on(setup.model, setup.eval).argmax(-1) == labels).double().mean())
