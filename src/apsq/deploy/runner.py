"""Run a program: the host runs the float ops, every quantized matmul's PSUMs run on a backend, checked.

:func:`run` executes the host model (rebuilt from the program, or given) with each quantized layer's
``accumulate`` replaced by the engine path of its program entry:

1. the host quantizes the layer input with the program's activation exponent (int codes);
2. the tile sums ``T [n, *out]`` are computed from those codes and the program's int weight codes
   (:mod:`apsq.psum.tiling`, int64);
3. the PSUM accumulation runs on the backend -- ``golden``: :func:`apsq.integer.psum.psum_accumulate_int`
   with the program's per-step (per-lane) shifts; ``amaranth`` / ``verilator``: the RAE RTL driven with
   those tile sums, shifts and the ``s0 s1`` / ``s2`` encodings (:func:`apsq.hw.rae.run_layers`);
4. the host dequantizes ``code * 2^(e_{n-1} + ex + ew)`` once to the layer's dtype and the model goes on
   (bias, LayerNorm, GELU, softmax, residuals: the model's own float code).

Verification (``verify=True``), stage by stage on the same layer input, exactly: the layer's fake-quant
float path (``layer.accumulate``) == the integer model of the trained layer
(:func:`apsq.integer.integer_forward`) == the program's golden run == the RTL's codes; and at the end the
model's outputs equal the unchanged PyTorch model's bit for bit. The first difference stops the run with
a :class:`DeployMismatch` after writing ``<mismatch_dir>/mismatch_<layer>.npz`` (the layer's input codes,
tile sums, shifts, expected and actual codes).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
from torch import nn

from apsq.deploy.activity import LayerActivity, engine_activity
from apsq.deploy.export import build_host
from apsq.deploy.program import EngineLayer, Program
from apsq.device import call_model
from apsq.errors import APSQError, check_choice
from apsq.integer import integer_forward
from apsq.integer.psum import IntPSUM, psum_accumulate_int
from apsq.nn.layers import QuantLayer
from apsq.nn.transform import quant_layers
from apsq.psum.accumulate import lane_steps
from apsq.psum.tiling import conv2d_partials, linear_partials, matmul_partials
from apsq.quant.ops import quantize_codes

if TYPE_CHECKING:  # apsq.hw.rae imports amaranth: only the RTL backends load it
    from apsq.hw.rae import RAEParams, RunStats

__all__ = ["BACKENDS", "DeployMismatch", "LayerReport", "RunReport", "host_model", "run", "outputs_of"]

BACKENDS = ("golden", "amaranth", "verilator")


class DeployMismatch(APSQError):
    """Two stages of the verification differ; ``path`` is the ``.npz`` with the evidence."""

    def __init__(self, message: str, path: Path | None) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class LayerReport:
    """What one program layer did in a run (all its calls)."""

    index: int
    name: str
    op: str
    calls: int = 0
    outputs: int = 0
    lane_steps: int = 0
    checked_outputs: int = 0
    rtl_cycles: int = 0
    rtl_beats_in: int = 0
    rtl_wall_s: float = 0.0
    activity: LayerActivity = field(default_factory=LayerActivity)
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    """``(M rows, K, N)`` of every call (for the energy model)."""

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("activity", "shapes")}
        return {**d, "activity": self.activity.to_dict()}


@dataclass
class RunReport:
    """The result of :func:`run`: the model's output through the engine and the per-layer record."""

    backend: str
    output: Any
    reference: Any = None
    layers: list[LayerReport] = field(default_factory=list)
    outputs_equal: bool | None = None
    wall_s: float = 0.0

    @property
    def lane_steps(self) -> int:
        return sum(r.lane_steps for r in self.layers)

    @property
    def rtl_wall_s(self) -> float:
        return sum(r.rtl_wall_s for r in self.layers)


def outputs_of(out: Any) -> torch.Tensor:
    """The tensor to compare of a model output: ``.logits``, the first of a tuple, or the tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise APSQError(f"cannot find the output tensor of a {type(out).__name__} (logits / tensor / tuple)")


def host_model(program: Program) -> nn.Module:
    """Rebuild the host model of a program exported from an ``apsq train`` run (its stored state)."""
    from apsq.train.checkpoint import load_model_state

    host = program.manifest.host
    if host.builder != "apsq-train" or host.train_config is None:
        raise APSQError("this program was exported from a Python model (host builder 'caller'): pass that model, "
                        "apsq.deploy.run(program, inputs, model=model)")
    model = build_host(host.train_config)
    load_model_state(model, program.tensors, Path(program.manifest.source), prefix=host.state_prefix)
    return model.eval()


def _rae_params(program: Program) -> RAEParams:
    from apsq.hw.rae import RAEParams

    e = program.manifest.engine
    return RAEParams(lanes=e.lanes, depth=e.depth, bits=e.bits, tile_bits=e.tile_bits, frac_bits=e.frac_bits,
                     shift_bits=e.shift_bits, lane_exponents=e.lane_exponents)


def _work(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype not in (torch.float32, torch.float64) else x


class _EngineLayer:
    """The engine path of one program layer (codes, tile sums, backend, dequantize, checks)."""

    def __init__(self, lay: EngineLayer, program: Program, module: QuantLayer, backend: str,
                 params: RAEParams | None, verify: bool, mismatch_dir: Path, report: LayerReport,
                 integer_check: bool = True) -> None:
        """``params``: the RAE instance the RTL backends run (``None``: the golden backend only).

        Raises:
            APSQError: a linear / conv2d entry of the program without its ``weight_codes`` tensor.
        """
        self.lay, self.module, self.backend, self.params = lay, module, backend, params
        self.integer_check = integer_check
        self.engine = program.manifest.engine
        self.verify, self.mismatch_dir, self.report = verify, mismatch_dir, report
        # the int weight codes as float64 (the exact BLAS operand of tile_sums); attention ops have none
        self.w_codes = (program.tensor(lay, "weight_codes").to(torch.float64) if lay.op in ("linear", "conv2d")
                        else None)
        self.e_all = torch.tensor(lay.engine_exponents, dtype=torch.int64)  # [n] or [n, C]
        self.ew = torch.tensor(lay.weight_exponents, dtype=torch.int64)  # [C] or [1]
        self.chan_axis = -3 if lay.op == "conv2d" else -1

    def _lanes(self, t: torch.Tensor) -> torch.Tensor:
        """``[n]`` / ``[n, C]`` per-step values shaped to broadcast against ``[n, *out]`` (channel axis)."""
        if t.dim() == 1:
            return t
        return t.reshape(*t.shape, *([1] * (-self.chan_axis - 1)))

    def tile_sums(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        lay = self.lay
        step_x = torch.tensor(2.0 ** lay.act_exponent, dtype=torch.float64)
        codes: tuple[torch.Tensor, ...] = (quantize_codes(_work(xs[0]).double(), step_x, lay.act_bits).cpu(),)
        # float64 BLAS on the int codes is exact: every product and partial sum of a tile is an integer
        # of at most tile * 2^(a-1) * 2^(b-1) < 2^53 (checked at export: tile_sum_bits); int64 bmm is ~100x slower
        if lay.op in ("linear", "conv2d"):
            f = self.w_codes
            assert f is not None, "__init__ loads the weight codes of every linear / conv2d entry"
            if lay.conv is None:
                t = linear_partials(codes[0].double(), f, lay.tile)
            else:  # conv2d (EngineLayer's validator: conv is given exactly for op conv2d)
                c = lay.conv
                t = conv2d_partials(codes[0].double(), f, lay.tile, c.stride, c.padding, c.dilation, c.groups)
        else:
            step_b = torch.tensor(2.0 ** lay.weight_exponents[0], dtype=torch.float64)
            codes = (*codes, quantize_codes(_work(xs[1]).double(), step_b, lay.weight_bits).cpu())
            t = matmul_partials(codes[0].double(), codes[1].double(), lay.tile)
        return t.to(torch.int64), codes

    def golden(self, t: torch.Tensor) -> tuple[IntPSUM, torch.Tensor]:
        """The program's integer run: ``IntPSUM`` (exponent in tile-sum units) and the unit exponent."""
        n = t.shape[0]
        if n > self.lay.n_steps:
            raise APSQError(f"layer {self.lay.name}: {n} tile steps, the program holds shifts for {self.lay.n_steps} "
                            f"(K = {self.lay.k} at most)")
        e = self._lanes(self.e_all[:n])
        r = psum_accumulate_int(t, e, mode="apsq", gs=self.lay.gs, bits=self.lay.psum_bits)
        unit = self.lay.act_exponent + (self._lanes(self.ew[None])[0] if self.ew.numel() > 1 else self.ew.reshape(()))
        return r, unit

    def rtl(self, t: torch.Tensor, params: RAEParams) -> tuple[np.ndarray, RunStats]:
        from apsq.hw.rae import run_layers, validate_layer

        n = t.shape[0]
        e = self._lanes(self.e_all[:n])
        flat = t.reshape(n, -1)
        if e.dim() > 1:
            e = torch.broadcast_to(lane_steps(e, t.dim()), t.shape).reshape(n, -1)
        job = validate_layer(flat, e, self.lay.gs, params)
        (codes,), stats = run_layers([job], params, backend=self.backend)
        return codes.reshape(t.shape[1:]), stats

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        lay, rep = self.lay, self.report
        dtype = xs[0].dtype
        t, codes = self.tile_sums(xs)
        gold, unit = self.golden(t)
        out_code = gold.code
        rep.calls += 1
        rep.outputs += gold.code.numel()
        rep.lane_steps += t.numel()
        k = xs[0].shape[-1] if lay.op != "conv2d" else lay.k
        n_out = gold.code.shape[-3] if lay.op == "conv2d" else gold.code.shape[-1]
        rep.shapes.append((gold.code.numel() // n_out, k, n_out))
        measured = None
        if self.params is not None:  # an RTL backend
            rtl_codes, stats = self.rtl(t, self.params)
            measured = stats.activity  # counted from the RTL's own enables
            rep.rtl_cycles += stats.cycles
            rep.rtl_beats_in += stats.beats_in
            rep.rtl_wall_s += stats.wall_s
            rtl_t = torch.from_numpy(rtl_codes)
            if not torch.equal(rtl_t, gold.code):
                self._mismatch("golden", self.backend, xs, codes, t, gold.code, rtl_t)
            # in the golden codes' memory layout (a conv's is channels-last-like): the host's float ops after
            # the layer (BatchNorm, pooling) reduce in layout order, and the model's own output has this layout
            out_code = torch.empty_like(gold.code).copy_(rtl_t)
        rep.activity.add(engine_activity(t.shape[0], lay.gs, gold.code.numel(), self.engine, measured))
        y = (out_code.to(torch.float64) * torch.exp2((gold.exponent + unit).to(torch.float64))).to(dtype)
        if self.verify:
            with torch.no_grad():
                fq = type(self.module).accumulate(self.module, *xs)
                ref = integer_forward(self.module, *xs) if self.integer_check else None
            if ref is not None and not (torch.equal(ref.code, gold.code) and torch.equal(
                    torch.broadcast_to(ref.exponent, gold.code.shape),
                    torch.broadcast_to(gold.exponent + unit, gold.code.shape))):
                self._mismatch("trained layer (integer_forward)", "program golden", xs, codes, t, ref.code, gold.code)
            if not torch.equal(fq.cpu(), y.cpu()):
                fq_code = torch.round(fq.cpu().double() / torch.exp2((gold.exponent + unit).double())).to(torch.int64)
                self._mismatch("fake-quant PyTorch", "program golden", xs, codes, t, fq_code, gold.code)
            rep.checked_outputs += gold.code.numel()
        return y.to(xs[0].device)

    def _mismatch(self, expected_stage: str, actual_stage: str, xs: tuple[torch.Tensor, ...],
                  codes: tuple[torch.Tensor, ...], t: torch.Tensor, expected: torch.Tensor,
                  actual: torch.Tensor) -> NoReturn:
        bad = (expected != actual)
        idx = int(bad.reshape(-1).nonzero()[0]) if bad.any() else -1
        self.mismatch_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.lay.name)
        path = self.mismatch_dir / f"mismatch_{self.lay.index:03d}_{safe}.npz"
        arrays = {f"input{i}": x.detach().cpu().float().numpy() for i, x in enumerate(xs)}
        arrays.update({f"input{i}_codes": c.numpy() for i, c in enumerate(codes)})
        np.savez_compressed(path, **arrays, tile_sums=t.numpy(), engine_exponents=self.e_all.numpy(),
                            expected=expected.numpy(), actual=actual.numpy(), layer=np.array(self.lay.name),
                            stages=np.array([expected_stage, actual_stage]), allow_pickle=False)
        raise DeployMismatch(
            f"layer {self.lay.index} ({self.lay.name}, {self.lay.op}): {actual_stage} differs from {expected_stage} "
            f"at {int(bad.sum())} of {bad.numel()} outputs (first at flat index {idx}); evidence in {path}", path)


@contextmanager
def _patched(model: nn.Module, engines: dict[str, _EngineLayer]) -> Iterator[None]:
    mods = dict(quant_layers(model))
    try:
        for name, eng in engines.items():
            vars(mods[name])["accumulate"] = eng  # shadows the class's method (type(m).accumulate) on this instance
        yield
    finally:
        for name in engines:
            vars(mods[name]).pop("accumulate", None)


def run(
    program: Program,
    inputs: Any,
    backend: str = "golden",
    *,
    model: nn.Module | None = None,
    verify: bool = True,
    mismatch_dir: str | Path = "deploy-mismatch",
    integer_check: bool = True,
    check_layers: bool = True,
) -> RunReport:
    """Run ``inputs`` (one batch, as the model takes it) through the program on ``backend``.

    Args:
        program: from :func:`apsq.deploy.export` or :func:`apsq.deploy.load`.
        inputs: a mapping of tensors (``model(**inputs)``), a tuple, or a tensor.
        backend: ``golden`` (the integer model), ``amaranth`` (the RTL in Amaranth's simulator, slow) or
            ``verilator`` (the RTL compiled; needs ``verilator``).
        model: the host model; ``None`` rebuilds it from the program (``apsq train`` exports).
        verify: check every layer stage by stage and the final output against the unchanged model.
        mismatch_dir: where the evidence of a mismatch is written.
        check_layers: with ``verify``, the per-layer stages (``False``: only the final output is
            compared with the unchanged model's; the RTL is still compared with the golden model).
        integer_check: with ``verify``, also run the trained layer's own integer model
            (:func:`apsq.integer.integer_forward`, int64 tile sums: the slowest stage) on every layer.

    Returns:
        :class:`RunReport` (``output`` is the model's output computed through the engine).

    Raises:
        DeployMismatch: a stage differs (the ``.npz`` path is in the message).
        APSQError: a bad backend, a model that does not match the program, a missing simulator.
    """
    check_choice("backend", backend, BACKENDS)
    if model is None:
        model = host_model(program)
    mods = dict(quant_layers(model))
    missing = [lay.name for lay in program.layers if lay.name not in mods]
    if missing:
        raise APSQError(f"the model has no quantized layer {missing[0]!r} of the program ({len(missing)} missing); "
                        "pass the model the program was exported from")
    params = _rae_params(program) if backend != "golden" else None
    reports = [LayerReport(lay.index, lay.name, lay.op) for lay in program.layers]
    engines = {lay.name: _EngineLayer(lay, program, mods[lay.name], backend, params, verify and check_layers, Path(mismatch_dir), rep,
                                         integer_check)
               for lay, rep in zip(program.layers, reports, strict=True)}
    was = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), _patched(model, engines):
            out = call_model(model, inputs)
        rep = RunReport(backend, out, layers=reports, wall_s=time.perf_counter() - t0)
        if verify:
            with torch.no_grad():
                rep.reference = call_model(model, inputs)
            rep.outputs_equal = bool(torch.equal(outputs_of(out), outputs_of(rep.reference)))
            if not rep.outputs_equal:
                diff = (outputs_of(out).double() - outputs_of(rep.reference).double()).abs().max()
                raise DeployMismatch(
                    f"every layer matched, but the model outputs differ (max |diff| {float(diff):.3g}). What differs "
                    "lies between the engine's layers: a quantized layer that ran outside the program, "
                    "or a layer output handed back in another memory layout or dtype than the "
                    "PyTorch layer's, which the next host operation may then sum in another order", None)
    finally:
        model.train(was)
    return rep


def lane_steps_per_s(report: RunReport) -> float:
    """RTL lane-steps per second of simulation (``nan`` for the golden backend)."""
    return report.lane_steps / report.rtl_wall_s if report.rtl_wall_s > 0 else math.nan
