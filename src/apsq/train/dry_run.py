"""A dry run of sharded APSQ QAT for a LLaMA-class model: nothing is allocated, nothing trained.

The model is built on the meta device and quantized with :func:`apsq.quantize_` (shapes only), then:

* the quantized layers (kind, reduction length ``K``, output width ``N``, PSUM tile steps ``n``);
* memory per GPU for FSDP2 (:mod:`apsq.train.sharded`) over ``1/2/4/8`` GPUs -- parameters, gradients and
  AdamW state (two moments, same dtype as the parameter), quantizer step parameters (always float32,
  :mod:`apsq.quant.fp32_steps`, with their gradients and moments), each sharded ``1/N``; the teacher
  for distillation (its parameters only, sharded); and the transient unsharded unit of FSDP2 (the largest
  decoder layer all-gathered twice -- the current one and the prefetched next -- plus its unsharded
  gradients before the reduce-scatter). Not included: activations (batch x sequence dependent),
  allocator fragmentation, CUDA context, communication buffers beyond that unit;
* the energy model's IS / WS report of the same architecture (:func:`apsq.hw.energy.compare` on the
  built-in ``llama2-7b`` workload: INT32 PSUMs vs APSQ at the config's ``gs`` / PSUM width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from apsq.errors import APSQError, check_choice

MODELS: dict[str, dict[str, Any]] = {
    "llama2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                  "num_key_value_heads": 32, "vocab_size": 32000},
}
"""Architectures the dry run knows (LLaMA-2-7B: Touvron et al. 2023, Table 1 / its config.json)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GIB = 2.0**30


@dataclass(frozen=True)
class QuantLayerInfo:
    name: str
    kind: str
    k: int
    n_out: int | None
    tiles: int
    k_tokens: bool = False
    """``k`` is the largest key count (attention's AV reduces over the keys), not a fixed width."""


def build_meta(model: str, mode: str = "apsq", gs: int = 2, tile: int = 32, psum_bits: int = 8,
               exclude: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """The model on the meta device, quantized (attention matmuls included); no memory is allocated."""
    check_choice("model", model, tuple(MODELS))
    import apsq
    from transformers import LlamaConfig, LlamaForCausalLM

    eager: dict[str, Any] = {"attn_implementation": "eager"}  # PreTrainedConfig takes it at run time (untyped)
    cfg = LlamaConfig(**MODELS[model], max_position_embeddings=4096, tie_word_embeddings=False, **eager)
    with torch.device("meta"):
        m = LlamaForCausalLM(cfg)
    apsq.quantize_(m, apsq.APSQConfig(mode=mode, gs=gs, tile=tile, psum_bits=psum_bits, attention_matmuls=True,
                                      exclude=exclude))
    return m


def quant_layer_infos(model: nn.Module) -> list[QuantLayerInfo]:
    """Every quantized layer with its reduction length and PSUM tile steps."""
    from apsq.nn.transform import quant_layers

    out = []
    for name, m in quant_layers(model):
        n_out = getattr(m, "out_features", None)
        out.append(QuantLayerInfo(name, m.kind, m._k(), n_out, m._n(), "k" in getattr(m, "positions", ())))
    return out


def _is_step(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("log2_scale", "log2_scales")


def memory_plan(model: nn.Module, gpus: tuple[int, ...] = (1, 2, 4, 8), dtype: str = "bfloat16",
                teacher: bool = True) -> dict[str, Any]:
    """Bytes per GPU of sharded QAT for each GPU count (see the module docstring for what is counted).

    Raises:
        APSQError: unknown ``dtype``, a GPU count below 1.
    """
    check_choice("dtype", dtype, tuple(DTYPES))
    if any(int(g) < 1 for g in gpus):
        raise APSQError(f"gpus: every GPU count must be >= 1, got {list(gpus)}")
    wbytes = torch.empty((), dtype=DTYPES[dtype]).element_size()
    n_w = sum(p.numel() for n, p in model.named_parameters() if not _is_step(n))
    n_s = sum(p.numel() for n, p in model.named_parameters() if _is_step(n))
    blocks = [b for b in model.modules() if isinstance(b, nn.ModuleList)]
    layers = max(blocks, key=len) if blocks else nn.ModuleList()
    unit = max((sum(p.numel() for n, p in b.named_parameters() if not _is_step(n)) for b in layers), default=0)
    state = {"parameters": n_w * wbytes, "gradients": n_w * wbytes, "optimizer": 2 * n_w * wbytes,
             "quantizer_steps": n_s * 4 * 4}  # float32 value, gradient, two AdamW moments
    if teacher:
        state["teacher"] = n_w * wbytes
    transient = unit * wbytes * 3  # two all-gathered layers (current + prefetched) + one layer of unsharded grads
    rows = []
    for g in gpus:
        sharded = {k: v / g for k, v in state.items()}
        total = sum(sharded.values()) + (transient if g > 1 else 0)
        rows.append({"gpus": int(g), **{f"{k}_gib": round(v / GIB, 3) for k, v in sharded.items()},
                     "fsdp_transient_gib": round((transient if g > 1 else 0) / GIB, 3), "total_gib": round(total / GIB, 2)})
    return {"dtype": dtype, "weights": n_w, "step_parameters": n_s, "largest_unit_parameters": unit,
            "teacher": teacher, "per_gpu": rows,
            "includes": "parameters, gradients, AdamW moments (parameter dtype), float32 quantizer steps with their "
                        "gradients and moments, the distillation teacher's parameters, all sharded 1/N; plus FSDP2's "
                        "transient unit (largest decoder layer all-gathered twice + its unsharded gradients) for N > 1",
            "excludes": "activations, allocator fragmentation, CUDA context, communication buffers"}


def energy_report(model: str = "llama2-7b", gs: int = 2, psum_bits: int = 8, seq_len: int = 512) -> dict[str, Any]:
    """IS and WS: INT32-PSUM baseline vs APSQ (``gs``, ``psum_bits``) on the built-in workload of ``model``."""
    from apsq.hw.energy import compare
    from apsq.hw.workloads.builtin import builtin_workload

    w = builtin_workload(model, phase="prefill", seq_len=seq_len)
    out = {}
    for df in ("is", "ws"):
        c = compare(w, df, gs, psum_bits)
        out[df] = {"baseline_pj": c.baseline.total_pj, "apsq_pj": c.apsq.total_pj, "reduction": c.reduction,
                   "psum_reduction": c.psum_reduction, "psum_share_baseline": c.psum_share_baseline}
    return {"workload": f"{model} prefill, seq_len {seq_len}", "gs": gs, "psum_bits": psum_bits, "dataflows": out}


def dry_run(model: str = "llama2-7b", gpus: tuple[int, ...] = (1, 2, 4, 8), dtype: str = "bfloat16",
            mode: str = "apsq", gs: int = 2, tile: int = 32, psum_bits: int = 8, seq_len: int = 512,
            teacher: bool = True, energy: bool = True) -> dict[str, Any]:
    """Quantized layers, memory per GPU and (``energy``) the IS/WS energy report, as one JSON-able dict."""
    from apsq.nn import QuantizeReport

    m = build_meta(model, mode, gs, tile, psum_bits)
    report: QuantizeReport = getattr(m, "apsq_report")  # a plain attribute quantize_ sets on the model
    infos = quant_layer_infos(m)
    kinds: dict[str, dict[str, Any]] = {}
    for i in infos:
        short = i.name.split(".")[-1] if ".layers." in i.name else i.name
        e = kinds.setdefault(short, {"kind": i.kind, "k": i.k, "n_out": i.n_out, "tiles": i.tiles,
                                        "k_tokens": i.k_tokens, "count": 0})
        e["count"] += 1
    res: dict[str, Any] = {"model": model, "quant": {"mode": mode, "gs": gs, "tile": tile, "psum_bits": psum_bits,
                                                     "attention_matmuls": True, "exclude": ["lm_head"]},
                           "quantized_layers": len(infos), "layer_kinds": kinds,
                           "skipped": [s.name for s in report.skipped],
                           "memory": memory_plan(m, gpus, dtype, teacher)}
    if energy:
        res["energy"] = energy_report(model, gs, psum_bits, seq_len)
    return res
