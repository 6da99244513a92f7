"""Trained model -> engine program: a pure function of the trained state (it never calibrates).

:func:`export` reads every quantized layer's trained steps (operands and PSUMs) and int codes, derives
what the engine must hold -- the worst-case tile sum from the trained weight codes, the range of the
shifts -- and refuses (:class:`APSQError` naming the layer, before anything is written) a layer the
engine cannot run: an uncalibrated layer, a mode other than ``apsq``, ``gs`` above the four banks, a
shift outside the RTL's range, a tile sum wider than its inputs, a bias that is not exact in tile-sum
units. With an example input it also records, from one traced forward, the execution order of the
layers and the float operations the host runs between them (:func:`trace_host`).

:func:`load_trained` rebuilds the model of an ``apsq train`` run folder (or its checkpoint file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import apsq
from apsq.config import RAE_BANKS
from apsq.deploy.program import (
    SCHEMA_VERSION,
    ConvSpec,
    EngineLayer,
    EngineSpec,
    HostOp,
    HostSpec,
    Manifest,
    Program,
    closing_flags,
)
from apsq.device import call_model
from apsq.errors import APSQError
from apsq.nn.layers import QuantConv1d, QuantConv2d, QuantLayer, QuantLinear, QuantMatmul
from apsq.nn.transform import quant_layers

if TYPE_CHECKING:
    from apsq.train.config import TrainConfig

__all__ = ["export", "trace_host", "load_trained", "NUM_BANKS"]

NUM_BANKS = RAE_BANKS
"""The RAE's PSUM SRAM banks (:data:`apsq.config.RAE_BANKS`, the one constant): ``gs <= 4``."""

_SKIP = {
    "view", "reshape", "transpose", "permute", "contiguous", "size", "dim", "to", "unsqueeze", "squeeze",
    "expand", "flatten", "clone", "detach", "split", "chunk", "type_as", "is_floating_point", "numel",
    "__getitem__", "__setitem__", "__get__", "__len__", "__iter__", "__bool__", "__format__", "__index__", "__eq__",
    "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__and__", "__invert__", "__or__", "__hash__", "__contains__",
    "__repr__", "__int__", "__float__", "stride", "storage_offset", "element_size", "is_contiguous", "requires_grad_",
    "expand_as", "view_as", "reshape_as", "new_zeros", "new_ones", "new_empty", "new_tensor", "get_device",
    "_has_compatible_shallow_copy_type", "__setstate__", "__reduce_ex__", "__deepcopy__", "item", "tolist",
    "broadcast_to", "repeat", "narrow", "select", "cpu", "cuda", "float", "double", "half", "bfloat16", "long",
    "int", "bool", "zeros", "ones", "arange", "full", "empty", "tensor", "as_tensor", "finfo", "iinfo",
    "is_autocast_enabled", "is_grad_enabled", "is_complex", "any", "all", "isfinite", "__rmul__", "__radd__",
}
_DUNDER = {"__add__": "add", "__iadd__": "add", "__sub__": "sub", "__rsub__": "sub", "__mul__": "mul",
           "__truediv__": "div", "__matmul__": "matmul", "__neg__": "neg", "__pow__": "pow"}


def _op_name(func: Any) -> str | None:
    name = getattr(func, "__name__", None) or str(func)
    name = _DUNDER.get(name, name)
    if name in _SKIP or name.startswith("_"):
        return None
    return name.rstrip("_")


class _Recorder(TorchFunctionMode):
    """Records the torch functions called outside the quantized layers, with the module they ran in."""

    def __init__(self, names: dict[int, str], quant: dict[int, str]) -> None:
        super().__init__()
        self.names, self.quant = names, quant
        self.stack: list[str] = []
        self.inside = 0  # > 0 while a quantized layer runs (its ops are the engine's)
        self.order: list[str] = []
        self.ops: list[HostOp] = []

    def pre(self, mod: nn.Module, _args: Any) -> None:
        name = self.names.get(id(mod), "?")
        self.stack.append(name)
        if id(mod) in self.quant:
            if self.inside == 0 and name not in self.order:
                self.order.append(name)
            self.inside += 1

    def post(self, mod: nn.Module, _args: Any, _out: Any) -> None:
        if self.stack:
            self.stack.pop()
        if id(mod) in self.quant:
            self.inside -= 1

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if self.inside == 0:
            op = _op_name(func)
            if op is not None:
                module = self.stack[-1] if self.stack else ""
                where = len(self.order)
                last = self.ops[-1] if self.ops else None
                if last is not None and (last.op, last.module, last.before_layer) == (op, module, where):
                    self.ops[-1] = last.model_copy(update={"count": last.count + 1})
                else:
                    self.ops.append(HostOp(before_layer=where, op=op, module=module))
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def trace_host(model: nn.Module, example: Any) -> tuple[list[str], list[HostOp]]:
    """Run ``model`` once on ``example``: the quantized layers' names in execution order (first call)
    and the host's float ops (views, casts and reshapes left out; consecutive repeats merged)."""
    names = {id(m): n for n, m in model.named_modules()}
    quant = {id(m): n for n, m in quant_layers(model)}
    rec = _Recorder(names, quant)
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    with ExitStack() as stack:
        h1 = register_module_forward_pre_hook(rec.pre)
        h2 = register_module_forward_hook(rec.post)
        stack.callback(h1.remove)
        stack.callback(h2.remove)
        was = model.training
        model.eval()
        try:
            with rec:
                call_model(model, example)
        finally:
            model.train(was)
    return rec.order, rec.ops


def _op_kind(name: str, layer: nn.Module) -> str:
    if isinstance(layer, QuantMatmul):
        label = f"{name} {getattr(layer, 'layer_name', '')}"
        if name.endswith("apsq_qk") or label.endswith("qk_matmul"):
            return "attention_qk"
        if name.endswith("apsq_av") or label.endswith("av_matmul"):
            return "attention_av"
        return "matmul"
    if isinstance(layer, QuantConv1d):
        raise APSQError(f"layer {name}: Conv1d is not supported by apsq deploy yet (linear, conv2d, attention "
                        "matmuls are); exclude it from quantization")
    if isinstance(layer, QuantConv2d):
        return "conv2d"
    if isinstance(layer, QuantLinear):
        return "linear"
    raise APSQError(f"layer {name}: {type(layer).__name__} is not an engine layer")


def _int_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def _tile_abs_sums(w_codes: torch.Tensor, tile: int) -> torch.Tensor:
    """``[N, n]``: sum of ``|w|`` over each tile of every output row (``w_codes [N, K]``)."""
    nrow, k = w_codes.shape
    n = -(-k // tile)
    pad = torch.zeros(nrow, n * tile, dtype=torch.int64)
    pad[:, :k] = w_codes.abs()
    return pad.reshape(nrow, n, tile).sum(-1)


def _layer(index: int, name: str, layer: QuantLayer, engine: EngineSpec) -> tuple[EngineLayer, dict[str, torch.Tensor]]:
    """One layer's program entry and tensors, or an APSQError naming it."""
    op = _op_kind(name, layer)
    q = layer.qcfg
    if q.mode != "apsq":
        raise APSQError(f"layer {name}: mode {q.mode!r}; the RAE runs mode 'apsq' only (exclude the layer, or "
                        "train it with mode: apsq)")
    if q.gs > NUM_BANKS:
        raise APSQError(f"layer {name}: gs={q.gs} needs {q.gs} PSUM banks, the RAE has {NUM_BANKS} (gs 1..4)")
    if q.psum_bits != engine.bits:
        raise APSQError(f"layer {name}: psum_bits={q.psum_bits}, the engine's codes are {engine.bits} bits; "
                        "every layer of one program needs the same psum_bits")
    tensors: dict[str, torch.Tensor] = {}
    conv = None
    out_features: int | None
    if isinstance(layer, QuantMatmul):
        a_bits = b_bits = q.act_bits
        ex = int(layer.a_quant.exponent().reshape(()))
        ew = layer.b_quant.exponent().reshape(-1).cpu()
        k = layer.max_k
        out_features = layer.psum.channels if layer.psum.per_channel else None
        kk = min(k, q.tile)
        max_tile = kk * (1 << (a_bits - 1)) * (1 << (b_bits - 1))
        has_bias = False
    else:
        a_bits, b_bits = q.act_bits, q.weight_bits
        ex = int(layer.act_quant.exponent().reshape(()))
        ew = layer.weight_quant.exponent().reshape(-1).cpu()
        if isinstance(layer, QuantConv2d):
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise APSQError(f"layer {name}: padding {layer.padding!r} / padding_mode {layer.padding_mode!r}; "
                                "apsq deploy takes numeric zero padding only")
            w = layer.weight
            conv = ConvSpec(in_channels=layer.in_channels, kernel=tuple(layer.kernel_size), stride=tuple(layer.stride),
                            padding=tuple(layer.padding), dilation=tuple(layer.dilation), groups=layer.groups)
            out_features = layer.out_channels
        else:
            assert isinstance(layer, QuantLinear), "_op_kind refused the other kinds"
            w = layer.linear_weight()
            out_features = w.shape[0]
        wc = layer.weight_quant.codes(w.detach().float()).cpu()
        k = layer._k()
        max_tile = int(_tile_abs_sums(wc.reshape(wc.shape[0], -1), q.tile).max()) * (1 << (a_bits - 1))
        tensors[f"layer/{index}/weight_codes"] = wc.to(_int_dtype(b_bits))
        bias = layer.bias
        has_bias = bias is not None
        if bias is not None:
            unit = (ex + ew).to(torch.float64)  # [C] or [1]
            b = bias.detach().cpu().to(torch.float64)
            units = (b * torch.exp2(-unit)).to(torch.float32)
            if not torch.equal(units.to(torch.float64) * torch.exp2(unit), b):
                raise APSQError(f"layer {name}: its bias is not exact in tile-sum units (float32 range); the program "
                                "cannot carry it bit for bit")
            tensors[f"layer/{index}/bias_units"] = units
    n = -(-k // q.tile)
    psum_e = layer.psum.exponents(n).cpu()  # [n] or [n, C]
    if psum_e.dim() == 2 or ew.numel() > 1:
        lane_e = (psum_e if psum_e.dim() == 2 else psum_e[:, None]) - ex - ew.reshape(1, -1)
        if lane_e.shape[1] == 1:
            lane_e = lane_e[:, 0]
    else:
        lane_e = psum_e - ex - int(ew)
    lo, hi = int(lane_e.min()), int(lane_e.max())
    if lo < engine.exp_min or hi > engine.exp_max:
        raise APSQError(f"layer {name}: PSUM shifts span [{lo}, {hi}], outside the RAE's shifter range "
                        f"[{engine.exp_min}, {engine.exp_max}] (frac_bits={engine.frac_bits}, "
                        f"shift_bits={engine.shift_bits}); export with a wider shifter (--shift-bits / --frac-bits)")
    tile_bits = max_tile.bit_length() + 1
    if tile_bits > min(engine.tile_bits, 53):  # 53: the runner's exact float64 tile sums
        raise APSQError(f"layer {name}: its worst-case tile sum {max_tile} needs {tile_bits} signed bits, the RAE's "
                        f"tile-sum inputs have {engine.tile_bits} (a smaller tile or fewer operand bits)")
    gran = "channel" if layer.psum.per_channel else "tensor"
    entry = EngineLayer(
        index=index, name=name, op=op, k=k, out_features=out_features, conv=conv, tile=q.tile, n_steps=n, gs=q.gs,
        s0=(q.gs - 1) & 1, s1=(q.gs - 1) >> 1, s2=closing_flags(n, q.gs), psum_bits=q.psum_bits, act_bits=a_bits,
        weight_bits=b_bits, psum_granularity=gran, act_exponent=ex, weight_exponents=ew.tolist(),
        psum_exponents=psum_e.tolist(), engine_exponents=lane_e.tolist(), max_tile_sum=max_tile,
        tile_sum_bits=tile_bits, has_bias=has_bias,
        tensors={k_.rsplit("/", 1)[1]: k_ for k_ in tensors},
    )
    return entry, tensors


@torch.no_grad()
def export(
    model: nn.Module,
    example: Any = None,
    *,
    lanes: int = 32,
    depth: int = 16,
    frac_bits: int = 8,
    shift_bits: int = 5,
    tile_bits: int = 32,
    source: str = "python",
    train_config: Mapping[str, Any] | None = None,
) -> Program:
    """The engine program of a trained (calibrated / QAT) model.

    Args:
        model: a model quantized with :func:`apsq.quantize_` and calibrated or trained.
        example: one input batch (what ``model`` is called with: a mapping of tensors, a tuple or a
            tensor); with it the layers are listed in execution order and the host ops are recorded
            (one traced forward, in eval mode); without it, in module order and no host ops.
        lanes, depth, frac_bits, shift_bits, tile_bits: the RAE instance (:class:`apsq.hw.rae.RAEParams`).
        source: what the model came from (stored in the manifest).
        train_config: the ``apsq train`` config (JSON-able) the host rebuilds the model from; ``None``:
            the caller passes the model to :func:`apsq.deploy.run`.

    Returns:
        :class:`Program` (nothing is written: :func:`apsq.deploy.save`).

    Raises:
        APSQError: no quantized layer, an engine parameter outside the RAE's limits (:class:`RAEParams
            <apsq.hw.rae.RAEParams>`), or a layer the engine cannot hold (named; see the module docstring).
    """
    layers = dict(quant_layers(model))
    if not layers:
        raise APSQError("the model has no quantized layer: quantize it with apsq.quantize_ and train / calibrate it")
    bits = {lay.qcfg.psum_bits for lay in layers.values()}
    from apsq.hw.rae import RAEParams

    try:  # the engine's own limits, before any work (EngineSpec would raise a raw pydantic error)
        RAEParams(lanes=lanes, depth=depth, bits=max(bits), tile_bits=tile_bits, frac_bits=frac_bits,
                  shift_bits=shift_bits)
    except APSQError as exc:
        raise APSQError(f"the RAE instance: {exc} (lanes / depth / frac_bits / shift_bits / tile_bits of the "
                        "engine; apsq deploy export --lanes / --depth / --frac-bits / --shift-bits)") from None
    for name, layer in layers.items():  # before the traced forward: it would initialise the steps lazily
        if layer.needs_init():
            raise APSQError(f"layer {name}: its quantization steps are not calibrated (apsq.calibrate or train it "
                            "first); export never calibrates")
    host_ops: list[HostOp] = []
    order = list(layers)
    if example is not None:
        traced, host_ops = trace_host(model, example)
        order = traced + [n for n in layers if n not in traced]
    engine = EngineSpec(lanes=lanes, depth=depth, bits=max(bits), tile_bits=tile_bits, frac_bits=frac_bits,
                        shift_bits=shift_bits, lane_exponents=False)
    entries, tensors = [], {}
    for i, name in enumerate(order):
        entry, t = _layer(i, name, layers[name], engine)
        entries.append(entry)
        tensors.update(t)
    engine = engine.model_copy(update={"lane_exponents": any(e.per_lane for e in entries)})
    from apsq.hw.rae import RAEParams  # the engine instance must be buildable (its own checks)

    RAEParams(lanes=lanes, depth=depth, bits=engine.bits, tile_bits=tile_bits, frac_bits=frac_bits,
              shift_bits=shift_bits, lane_exponents=engine.lane_exponents)
    for k_, v in model.state_dict().items():
        tensors[f"host/{k_}"] = v.detach().cpu()
    host = HostSpec(builder="apsq-train" if train_config is not None else "caller", model_class=type(model).__name__,
                    train_config=json.loads(json.dumps(dict(train_config))) if train_config is not None else None)
    manifest = Manifest(schema_version=SCHEMA_VERSION, apsq_version=apsq.__version__, source=source, engine=engine,
                        host=host, layers=entries, host_ops=host_ops)
    return Program(manifest, tensors)


def _train_config(run: Path, meta: Mapping[str, Any]) -> TrainConfig:
    from apsq.train.config import parse_config

    cfg_file = run / "config.json"
    if cfg_file.is_file():
        return parse_config(json.loads(cfg_file.read_text()), str(cfg_file))
    if "config" in meta:
        return parse_config(meta["config"], f"{run} (checkpoint state)")
    raise APSQError(f"{run}: no config.json beside the checkpoint; give an apsq train run folder")


def build_host(train_config: Mapping[str, Any] | TrainConfig) -> nn.Module:
    """The quantized (uncalibrated) model an ``apsq train`` config describes, without pretrained weights
    (the caller loads the trained state)."""
    from apsq.train.config import TrainConfig, parse_config
    from apsq.train.models import build_model

    cfg = train_config if isinstance(train_config, TrainConfig) else parse_config(dict(train_config), "program host")
    model = build_model(cfg, weights=False)
    qcfg = cfg.apsq_config()
    if qcfg is None:
        raise APSQError("the run is full precision (apsq: null): there is nothing for the engine; export a QAT run")
    apsq.quantize_(model, qcfg)
    return model.eval()


OWN_MODEL_HINT = ("A model of your own (not an apsq train run): apsq.deploy.export(model, example_batch), "
                  "apsq.deploy.save(program, folder), then apsq.deploy.run(program, inputs, backend=..., model=model) "
                  "in Python (docs/deploy.md)")
"""What a command that takes ``apsq train`` runs tells the owner of another model."""


def load_trained(path: str | Path) -> tuple[nn.Module, TrainConfig, Path]:
    """``(model, train config, checkpoint file)`` of an ``apsq train`` run folder or its checkpoint.

    The run must have reached QAT (a checkpoint whose stage is ``qat``): a full-precision stage has no
    trained steps to export.
    """
    from apsq.train.checkpoint import load_model_state, read_tensors
    from apsq.train.loop import CKPT

    p = Path(path)
    ckpt = p / CKPT if p.is_dir() else p
    run = ckpt.parent
    try:
        tensors, meta = read_tensors(ckpt)
    except APSQError as exc:
        raise APSQError(f"{path} is not an apsq train run: {exc}. {OWN_MODEL_HINT}") from None
    if meta.get("stage") != "qat":
        raise APSQError(f"{ckpt}: stage {meta.get('stage')!r}; export needs a QAT checkpoint (stage 'qat') of an "
                        "apsq train run with an apsq: section")
    cfg = _train_config(run, meta)
    model = build_host(cfg)
    own = model.state_dict()
    legacy = [k for k in own if k.endswith("_extra_state") and f"model/{k}" not in tensors]
    if legacy and len(legacy) == sum(k.endswith("_extra_state") for k in own):
        # written before quantized layers kept their settings in the state dict: the run's config is the record
        tensors = {**tensors, **{f"model/{k}": own[k] for k in legacy}}
    load_model_state(model, tensors, ckpt)
    return model.eval(), cfg, ckpt
