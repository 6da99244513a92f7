"""ZigZag (zigzag-dse) as a second energy engine: our workload and accelerator, converted and run.

``apsq energy --engine zigzag`` converts a :class:`~apsq.hw.workloads.Workload` (every layer as its
GEMM ``O[b][k] += I[b][c]·W[k][c]`` with ``B = M``, ``C = K``, ``K = N``) and an
:class:`~apsq.hw.accelerator.Accelerator` into ZigZag's YAML inputs and runs ZigZag's cost model on the
**fixed** IS / WS / OS loop orders of ``apsq.hw.dataflow`` (ZigZag's LOMA search only allocates the
given loops to memory levels). The INT32 baseline is ZigZag's ``O`` precision = ``acc_bits``; the
quantized run sets ``O`` = ``psum_bits`` (stored partial sums) while ``O_final`` = ``act_bits`` (the
requantized result) in both. ZigZag applies ``O`` to the in-PE accumulator as well; APSQ keeps that at
INT32, so the register level is charged at ``acc_bits`` in both runs by giving the per-PE output
register's cost per ``acc_bits`` word (see :func:`to_zigzag_hardware`).

Conversion (``docs/energy-model.md`` §8):

- one ZigZag memory per distinct on-chip SRAM: the buffers named in ``Accelerator.shared_sram`` become
  one memory serving all their operands (capacity = their sum), the others one memory each; our
  output buffer is ZigZag's ``O`` memory only when there is no PSUM buffer of its own (ZigZag has one
  memory chain per operand);
- memory operands by role (:func:`memory_operands`): the stationary operand's chain is ``I2`` (WS, OS:
  weights; IS: inputs), the streamed operand's ``I1``, and the mapping links the layer's ``W`` / ``I``
  to them by dataflow (:func:`operand_links`; until issue 23 every dataflow was linked as WS, so an IS
  run priced the same WS machine on both sides and the cross-check could not see it);
- per-PE registers for the stationary operand (``I2``), the streamed operand (``I1``, only where its
  register energy is non-zero) and outputs (``O``), with our per-operand register energies;
- DRAM with our pJ/bit; every port has ``bandwidth_min`` = 8 bits and ``bandwidth_max`` = the word
  width, so ZigZag's word-access rounding charges exact bits (cost per access = pJ/bit × word);
- MAC energy = ``mac_pj``.

ZigZag is optional (``pip install 'apsq[baselines]'`` installs zigzag-dse 3.9.1); without it
:func:`require_zigzag` raises :class:`~apsq.errors.APSQError` saying how to install it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from apsq.errors import APSQError, check_bits, check_choice
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.dataflow.common import STATIONARY_OPERAND, check_streamed_buffer
from apsq.hw.workloads.base import Layer, Workload

__all__ = [
    "ZigZagLayer",
    "ZigZagResult",
    "require_zigzag",
    "to_zigzag_hardware",
    "memory_operands",
    "operand_links",
    "MAPPINGS",
    "zigzag_mapping",
    "zigzag_layer",
    "evaluate_zigzag",
]

MIN_BW = 8  # bits; every port's bandwidth_min (ZigZag rounds each transfer up to it)
ZZ_DATAFLOWS = ("is", "ws", "os")


def require_zigzag() -> Any:
    """Import ``zigzag.api`` or raise :class:`APSQError` saying why.

    zigzag-dse not installed: how to install it. Installed but its import fails (e.g. ``six``, which
    zigzag-dse 3.9.1 imports without declaring it; the ``baselines`` extra now declares it): the real
    import error, with the module that is missing.
    """
    try:
        import zigzag.api as api  # noqa: PLC0415
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "zigzag":
            raise APSQError(
                "--engine zigzag needs the optional package zigzag-dse (3.9.1): pip install 'apsq[baselines]' "
                "or pip install zigzag-dse==3.9.1"
            ) from None
        missing = f" (missing module {exc.name!r}: pip install {exc.name})" if getattr(exc, "name", None) else ""
        raise APSQError(f"--engine zigzag: zigzag-dse is installed but importing it failed: "
                        f"{type(exc).__name__}: {exc}{missing}; pip install 'apsq[baselines]' installs what it "
                        "needs") from exc
    return api


def _port(name: str, kind: str, word: int, alloc: list[str]) -> dict[str, Any]:
    return {"name": name, "type": kind, "bandwidth_min": MIN_BW, "bandwidth_max": int(word), "allocation": alloc}


def _memory(size_bits: float, r_pj_bit: float, w_pj_bit: float, word: int, operands: list[str],
            served: list[str]) -> dict[str, Any]:
    """One ZigZag memory with a read and a write port of ``word`` bits serving ``operands``."""
    rd, wr = [], []
    for op in operands:
        if op == "O":
            rd += ["O, tl", "O, th"]
            wr += ["O, fh", "O, fl"]
        else:
            rd.append(f"{op}, tl")
            wr.append(f"{op}, fh")
    return {
        "size": int(max(size_bits, MIN_BW)),
        "r_cost": float(r_pj_bit * word),
        "w_cost": float(w_pj_bit * word),
        "area": 0,
        "latency": 1,
        "auto_cost_extraction": False,
        "operands": operands,
        "ports": [_port("r_port_1", "read", word, rd), _port("w_port_1", "write", word, wr)],
        "served_dimensions": served,
    }


def memory_operands(dataflow: str) -> dict[str, str]:
    """ZigZag memory operand of each of our operands under ``dataflow``, by role.

    ``I2`` is the chain that ends in the per-PE register holding the **stationary** operand (as in
    ZigZag's ``tpu_like``, whose ``I2`` chain is its weight register file), ``I1`` the **streamed**
    operand's chain, ``O`` the outputs': WS (and OS) put weights on ``I2`` and inputs on ``I1``, IS the
    other way round. :func:`zigzag_mapping` links the layer's ``W`` / ``I`` to them accordingly.
    """
    check_choice("dataflow", dataflow, ZZ_DATAFLOWS)
    stationary = STATIONARY_OPERAND.get(dataflow, "weight")
    streamed = "input" if stationary == "weight" else "weight"
    return {stationary: "I2", streamed: "I1", "psum": "O"}


def to_zigzag_hardware(acc: Accelerator, dataflow: str, o_bits: int | None = None) -> dict[str, Any]:
    """ZigZag accelerator description (the YAML as a dict) for ``acc`` under ``dataflow``.

    Memory operands by role (:func:`memory_operands`): the stationary operand's chain is ``I2``, the
    streamed one's ``I1``. Registers: per PE (``served_dimensions: []``), one element of the operand
    each, costing our per-operand register energy × width; the stationary operand always has one, the
    streamed operand only where its register energy is non-zero (a broadcast operand has none). The
    output register is ``acc_bits`` wide and its cost is per ``acc_bits`` word, so a run at a narrower
    ``O`` precision still pays the INT32 register (see the module docstring); it holds **one** PSUM: its
    capacity is ``o_bits`` (the run's ``O`` width; default ``acc_bits``). Until 2026-12-08 it was
    ``acc_bits`` whatever ``O`` was, so at ``O`` = 8 bits ZigZag could keep four partial sums in one
    accumulator and a searched mapping used that (``results/energy_zigzag/mapping_search.json``); the
    accumulator holds one INT32 sum. Raises :class:`APSQError` for an unknown dataflow.
    """
    op_of = memory_operands(dataflow)
    stationary = next(b for b, o in op_of.items() if o == "I2")
    pe = acc.pe_array
    bits = {"input": acc.act_bits, "weight": acc.weight_bits}
    mems: dict[str, Any] = {}
    # per-PE registers (bottom of each operand's chain); the operand's own energy, else reg_pj_per_bit
    for operand in (stationary, next(b for b, o in op_of.items() if o == "I1")):
        e = pe.reg_pj(operand)
        if operand == stationary or e > 0:
            mems[f"rf_{op_of[operand].lower()}"] = _memory(bits[operand], e, e, bits[operand], [op_of[operand]], [])
    o_reg = pe.reg_pj("psum")
    # the accumulator register is acc_bits wide whatever O is: min bandwidth = max = acc_bits, so one
    # access of any narrower O still costs one acc_bits word
    reg_o = _memory(acc.acc_bits, o_reg, o_reg, acc.acc_bits, ["O"], [])
    reg_o["size"] = int(acc.acc_bits if o_bits is None else check_bits("o_bits", o_bits, lo=1, hi=acc.acc_bits))
    for p in reg_o["ports"]:
        p["bandwidth_min"] = acc.acc_bits
    reg_o["ports"] = [
        {**reg_o["ports"][0], "name": "r_port_1", "allocation": ["O, tl"]},
        {**reg_o["ports"][0], "name": "r_port_2", "allocation": ["O, th"]},
        {**reg_o["ports"][1], "name": "w_port_1", "allocation": ["O, fh"]},
        {**reg_o["ports"][1], "name": "w_port_2", "allocation": ["O, fl"]},
    ]
    mems["rf_o"] = reg_o
    # on-chip SRAM: shared groups first
    bufs = {"input": acc.buffers.input, "weight": acc.buffers.weight, "psum": acc.buffers.psum}
    groups: list[list[str]] = []
    shared: list[str] = [b for b in (acc.shared_sram or ()) if b in bufs]
    if shared:
        groups.append(shared)
    groups += [[b] for b in bufs if b not in shared]
    for grp in groups:
        live = sorted((b for b in grp if bufs[b].capacity_kib > 0), key=lambda b: op_of[b])
        if not live:
            continue  # no buffer at this level: the operand goes from DRAM straight to its register
        first = bufs[live[0]]
        size = sum(bufs[b].capacity_bits for b in live)
        word = max(bufs[b].bits_per_cycle for b in live)
        mems["sram_" + "_".join(op_of[b].lower() for b in live)] = _memory(
            size, first.read_pj_per_bit, first.write_pj_per_bit, word, [op_of[b] for b in live], ["D1", "D2"]
        )
    dram_word = 64
    mems["dram"] = _memory(1e10, acc.dram.read_pj_per_bit, acc.dram.write_pj_per_bit, dram_word,
                           ["I1", "I2", "O"], ["D1", "D2"])
    rw = mems["dram"]["ports"]
    mems["dram"]["ports"] = [
        {"name": "rw_port_1", "type": "read_write", "bandwidth_min": MIN_BW, "bandwidth_max": dram_word,
         "allocation": rw[0]["allocation"] + rw[1]["allocation"]}
    ]
    return {
        "name": f"apsq_{acc.name}_{dataflow}".replace("-", "_"),
        "memories": mems,
        "operational_array": {
            "unit_energy": float(pe.mac_pj),
            "unit_area": 1,
            "dimensions": ["D1", "D2"],
            "sizes": [int(pe.rows), int(pe.cols)],
        },
    }


def operand_links(dataflow: str) -> dict[str, str]:
    """ZigZag's ``memory_operand_links`` under ``dataflow``: the layer's ``W`` and ``I`` to the memory
    operands their role gets in :func:`to_zigzag_hardware` (WS / OS: ``W`` → ``I2``; IS: ``I`` → ``I2``)."""
    mo = memory_operands(dataflow)
    return {"O": "O", "W": mo["weight"], "I": mo["input"]}


MAPPINGS = ("fixed", "temporal", "search")
"""``mapping=``: ``fixed`` = apsq's untiled IS / WS / OS order and unrolling (the agreement study);
``temporal`` = the dataflow's spatial unrolling with the temporal order searched by ZigZag (LOMA, for
energy); ``search`` = spatial unrolling and temporal order both searched by ZigZag, so the dataflow sets
only the operand links (ZigZag may choose another dataflow's unrolling, and a different one per PSUM
width). ``results/energy_zigzag/mapping_search.json`` compares the three."""


def zigzag_mapping(layer: Layer, dataflow: str, acc: Accelerator, mapping: str = "fixed") -> list[dict[str, Any]]:
    """The fixed loop order of ``apsq.hw.dataflow.<dataflow>`` as a ZigZag mapping (innermost first).

    ZigZag dims: ``B`` = M (rows of X), ``C`` = K (reduction), ``K`` = N (output features).
    WS: spatial N→D2 (columns), K→D1 (rows); temporal ``B`` (inner), ``C``, ``K``.
    IS: spatial M→D2, K→D1; temporal ``K`` (N, inner), ``C``, ``B``.
    OS: spatial M→D1, N→D2; temporal ``C`` (inner), ``K``, ``B``.
    Operand links by dataflow (:func:`operand_links`): the stationary operand on the per-PE register chain.
    ``mapping="temporal"`` leaves out the temporal order, ``"search"`` the spatial mapping too: ZigZag
    searches what is left out (:data:`MAPPINGS`). Raises ``APSQError`` for a ``mapping`` outside it.
    """
    check_choice("mapping", mapping, MAPPINGS)
    if mapping == "search":
        return [{"name": "default", "memory_operand_links": operand_links(dataflow)}]
    R, C = acc.pe_array.rows, acc.pe_array.cols
    m, k, n = layer.m, layer.k, layer.n

    def su(size: int, lanes: int) -> int:
        return max(1, min(size, lanes))

    order: list[list[Any]]  # [[dimension, loop size], ...] (lists: the YAML ZigZag reads)
    if dataflow == "ws":
        sp = {"D1": [f"C, {su(k, R)}"], "D2": [f"K, {su(n, C)}"]}
        order = [["B", m], ["C", math.ceil(k / su(k, R))], ["K", math.ceil(n / su(n, C))]]
    elif dataflow == "is":
        sp = {"D1": [f"C, {su(k, R)}"], "D2": [f"B, {su(m, C)}"]}
        order = [["K", n], ["C", math.ceil(k / su(k, R))], ["B", math.ceil(m / su(m, C))]]
    else:
        sp = {"D1": [f"B, {su(m, R)}"], "D2": [f"K, {su(n, C)}"]}
        order = [["C", k], ["K", math.ceil(n / su(n, C))], ["B", math.ceil(m / su(m, R))]]
    order = [o for o in order if o[1] > 1] or [order[0]]
    fixed: dict[str, Any] = {"name": "default", "spatial_mapping": sp, "temporal_ordering": order,
                             "memory_operand_links": operand_links(dataflow)}
    if mapping == "temporal":
        del fixed["temporal_ordering"]
    return [fixed]


def _padded(layer: Layer, dataflow: str, acc: Accelerator) -> tuple[int, int, int]:
    """Loop sizes rounded up to whole array tiles (ZigZag needs spatial x temporal = loop size)."""
    R, C = acc.pe_array.rows, acc.pe_array.cols

    def up(x: int, lanes: int) -> int:
        t = max(1, min(x, lanes))
        return math.ceil(x / t) * t

    if dataflow == "ws":
        return layer.m, up(layer.k, R), up(layer.n, C)
    if dataflow == "is":
        return up(layer.m, C), up(layer.k, R), layer.n
    return up(layer.m, R), layer.k, up(layer.n, C)


@dataclass(frozen=True)
class ZigZagLayer:
    """ZigZag's energy of one layer (all ``count`` instances), pJ, by operand (``I``, ``W``, ``O``) and level."""

    name: str
    total_pj: float
    mac_pj: float
    by_operand_level: dict[str, list[float]]
    levels: dict[str, list[str]]
    latency_cycles: float


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def zigzag_layer(layer: Layer, dataflow: str, acc: Accelerator, o_bits: int, workdir: Path,
                 mapping: str = "fixed") -> ZigZagLayer:
    """Run ZigZag on one layer with ``O`` = ``o_bits`` (stored PSUM width) and ``O_final`` = ``act_bits``,
    on apsq's fixed order or on the order / unrolling ZigZag searches (``mapping``, :data:`MAPPINGS`)."""
    api = require_zigzag()
    check_bits("o_bits", o_bits, lo=1, hi=64)
    hw = workdir / f"hw_{dataflow}_o{o_bits}.yaml"
    if not hw.exists():
        hw.write_text(yaml.safe_dump(to_zigzag_hardware(acc, dataflow, o_bits), sort_keys=False))
    mp = workdir / f"map_{mapping}_{dataflow}_{layer.m}_{layer.k}_{layer.n}.yaml"
    mp.write_text(yaml.safe_dump(zigzag_mapping(layer, dataflow, acc, mapping), sort_keys=False))
    m, k, n = _padded(layer, dataflow, acc)
    wl = [{
        "id": 0,
        "name": "gemm",
        "operator_type": "Gemm",
        "equation": "O[b][k]+=I[b][c]*W[k][c]",
        "loop_dims": ["B", "K", "C"],
        "loop_sizes": [m, n, k],
        "operand_precision": {"I": acc.act_bits, "W": acc.weight_bits, "O": int(o_bits), "O_final": acc.act_bits},
        "operand_source": {"I": 0, "W": 0},
    }]
    with _quiet():
        _, _, cmes = api.get_hardware_performance_zigzag(
            wl, str(hw), str(mp), opt="energy", dump_folder=str(workdir / "out"),
            loma_show_progress_bar=False,
        )
    cme = cmes[0][0]
    scale = layer.count * layer.macs / (layer.count * m * k * n)  # padding: charge the real MACs' share
    by_ol = {str(op): [float(e) * layer.count for e in lv] for op, lv in cme.mem_energy_breakdown.items()}
    hw_mems = to_zigzag_hardware(acc, dataflow)["memories"]
    links = operand_links(dataflow)
    mem_op = {"I": links["I"], "W": links["W"], "O": "O"}
    levels = {op: [name for name, mm in hw_mems.items() if mem_op[op] in mm["operands"]] for op in mem_op}
    total = (float(cme.mem_energy) + float(cme.mac_energy)) * layer.count
    return ZigZagLayer(layer.name, total, float(cme.mac_energy) * layer.count * scale, by_ol, levels,
                       float(cme.latency_total2) * layer.count)


@dataclass(frozen=True)
class ZigZagResult:
    """Per-layer ZigZag energies of the baseline (``O`` = acc_bits) and the quantized run (``O`` = psum_bits)."""

    workload: str
    dataflow: str
    psum_bits: int
    baseline_bits: int
    baseline: tuple[ZigZagLayer, ...]
    quantized: tuple[ZigZagLayer, ...]

    @property
    def baseline_pj(self) -> float:
        return float(sum(ly.total_pj for ly in self.baseline))

    @property
    def quantized_pj(self) -> float:
        return float(sum(ly.total_pj for ly in self.quantized))

    @property
    def reduction(self) -> float:
        return 1.0 - self.quantized_pj / self.baseline_pj

    @property
    def layer_reduction(self) -> np.ndarray:
        return np.array([1.0 - q.total_pj / b.total_pj for b, q in zip(self.baseline, self.quantized)])

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": "zigzag",
            "workload": self.workload,
            "dataflow": self.dataflow,
            "psum_bits": self.psum_bits,
            "baseline_bits": self.baseline_bits,
            "baseline_pj": self.baseline_pj,
            "apsq_pj": self.quantized_pj,
            "reduction": self.reduction,
            "layers": [
                {"name": b.name, "baseline_pj": b.total_pj, "apsq_pj": q.total_pj,
                 "reduction": 1.0 - q.total_pj / b.total_pj, "baseline_by_operand_level": b.by_operand_level,
                 "apsq_by_operand_level": q.by_operand_level, "levels": b.levels}
                for b, q in zip(self.baseline, self.quantized)
            ],
        }


def evaluate_zigzag(
    workload: Workload,
    dataflow: str,
    psum_bits: int = 8,
    accelerator: Accelerator | None = None,
    baseline_bits: int | None = None,
    progress: bool = False,
    console: Any = None,
    mapping: str = "fixed",
) -> ZigZagResult:
    """ZigZag energy of every layer of ``workload`` at ``O`` = baseline and ``O`` = ``psum_bits``.

    ``mapping``: ``fixed`` (apsq's untiled order, the default), ``temporal`` or ``search`` (ZigZag's own
    search, run separately for the baseline and the quantized ``O`` width; :data:`MAPPINGS`).

    Layers with the same shape are run once (ZigZag takes ~0.1–0.5 s per run; Segformer-B0 at 512², 20 s
    on a loaded 2-core machine). ``progress``: a rich progress bar over the distinct shapes on ``console``
    (the CLI passes its stderr console). ``baseline_bits`` defaults to ``acc_bits``. Raises
    :class:`APSQError` when zigzag-dse is missing.
    """
    require_zigzag()
    acc = accelerator or default_accelerator()
    check_choice("dataflow", dataflow, ZZ_DATAFLOWS)
    check_streamed_buffer(acc, dataflow)
    check_bits("psum_bits", psum_bits, lo=1, hi=64)
    check_choice("mapping", mapping, MAPPINGS)
    bb = acc.acc_bits if baseline_bits is None else check_bits("baseline_bits", baseline_bits, lo=1, hi=64)
    cache: dict[tuple[int, int, int, int], tuple[ZigZagLayer, ZigZagLayer]] = {}
    base, quant = [], []
    firsts = {(ly.m, ly.k, ly.n, ly.count): ly for ly in reversed(workload.layers)}  # one layer per shape
    shapes: Any = list(reversed(firsts.items()))
    if progress:
        from rich.progress import track

        shapes = track(shapes, description=f"zigzag {workload.name} ({len(shapes)} layer shapes)", console=console)
    with tempfile.TemporaryDirectory(prefix="apsq-zigzag-") as tmp:
        for key, ly in shapes:
            cache[key] = (
                zigzag_layer(ly, dataflow, acc, bb, Path(tmp), mapping),
                zigzag_layer(ly, dataflow, acc, psum_bits, Path(tmp), mapping),
            )
        for ly in workload.layers:
            b, q = cache[(ly.m, ly.k, ly.n, ly.count)]
            base.append(ZigZagLayer(ly.name, b.total_pj, b.mac_pj, b.by_operand_level, b.levels, b.latency_cycles))
            quant.append(ZigZagLayer(ly.name, q.total_pj, q.mac_pj, q.by_operand_level, q.levels, q.latency_cycles))
    return ZigZagResult(workload.name, dataflow, psum_bits, bb, tuple(base), tuple(quant))
