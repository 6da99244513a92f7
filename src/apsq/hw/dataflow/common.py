"""What every dataflow shares: PSUM traffic per accumulation mode, refetch and spill rules, assembly.

Arrays run over layers (numpy; shapes and counts in float64, see :class:`GemmShapes`), so one call evaluates a
whole workload.

PSUM traffic per output element over ``n = ceil(K / rows)`` tile steps (method doc §3; the last step's
result never returns to the PSUM buffer: it goes through the requantizer to the output buffer):

- ``none`` (INT32 baseline): step 0 writes, steps 1..n-2 read-modify-write, step n-1 reads:
  ``n-1`` reads and ``n-1`` writes of ``acc_bits``; one live slot.
- ``psq``: every tile's code is stored until the end (``Y = Σ Q(Tp_i)``, no running requantization):
  ``n-1`` writes, the last step reads the ``n-1`` codes; ``n-1`` live slots of ``psum_bits``.
- ``apsq`` (group size gs, G = ceil(n/gs) groups): a non-closing tile writes its code once; a closing tile
  reads the group's pending codes and the previous A, and (unless it is the last) writes A.
  Reads = Σ_g (|g|-1) + (G-1) = n-1, writes = (n-G) + (G-1) = n-1, of ``psum_bits`` each.
  Live slots = the most codes held at once: ``n-1`` if G = 1, ``max(gs-1, n-gs)`` if G = 2, else ``gs``
  (A_{g-1} plus gs-1 pending) — the method doc's "gs x 8 bits per live output" once n > 2·gs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from apsq.errors import PSUM_MODES, APSQError, check_bits, check_choice

__all__ = [
    "OPERANDS",
    "LEVELS",
    "PsumPlan",
    "psum_plan",
    "refetch_fraction",
    "SPILL_RULES",
    "BOUNDS",
    "GemmShapes",
    "DataflowTerms",
    "AccessCounts",
    "assemble",
    "ceil_div",
    "STATIONARY_OPERAND",
    "STREAMED_OPERAND",
    "check_streamed_buffer",
]

OPERANDS = ("input", "weight", "psum", "output")
LEVELS = ("reg", "sram", "dram")
IN, WT, PS, OUT = range(4)
REG, SRAM, DRAM = range(3)


def ceil_div(a: np.ndarray, b: int | np.ndarray) -> np.ndarray:
    return -(-a // b)


STATIONARY_OPERAND = {"ws": "weight", "is": "input"}
"""The operand held in the per-PE registers under IS / WS (OS holds the outputs; both operands stream)."""
STREAMED_OPERAND = {"ws": "input", "is": "weight"}
"""The operand streamed through the array under IS / WS, re-read once per stationary tile."""


def check_streamed_buffer(acc, dataflow: str) -> None:  # noqa: ANN001
    """Warn when ``acc`` has no buffer for ``dataflow``'s streamed operand (a machine built for another dataflow).

    Under IS / WS the streamed operand passes once per stationary tile (``ceil(stationary dim / cols)``
    times); with a 0-KiB buffer every pass is a DRAM read. ZigZag's ``tpu_like`` (``zigzag-tpu-like``)
    is a WS machine: no weight SRAM, so IS on it re-reads the whole weight matrix per 32-token input
    tile. The warning names the machine built for the dataflow (``zigzag-tpu-like-is`` for IS).
    """
    op = STREAMED_OPERAND.get(dataflow)
    if op is None or getattr(acc.buffers, op).capacity_kib > 0:
        return
    name = dataflow.upper()
    article = "an" if name in ("IS", "OS") else "a"
    # stacklevel 2: one location (this function's caller), so a comparison pricing both columns warns once
    warnings.warn(
        f"accelerator {acc.name!r} has no {op} buffer (buffers.{op}.capacity_kib = 0) but {name} streams "
        f"the {op}s: every stationary tile re-reads them from DRAM. It is not {article} {name} machine; use one "
        f"that buffers the {op}s (e.g. 'zigzag-tpu-like-is' for IS on ZigZag's tpu_like)",
        UserWarning, stacklevel=2)


@dataclass(frozen=True)
class PsumPlan:
    """Stored-PSUM traffic per output element (arrays over layers)."""

    mode: str
    steps: np.ndarray  # n = ceil(K / rows)
    reads: np.ndarray  # stored-PSUM reads per output element
    writes: np.ndarray  # stored-PSUM writes per output element
    slots: np.ndarray  # live stored PSUM codes per output element (peak)
    bits: int | np.ndarray  # width of one stored PSUM code (per layer for a per-layer baseline width)


def psum_plan(steps: np.ndarray, mode: str, gs: np.ndarray | int, psum_bits: int,
              acc_bits: int | np.ndarray, full_precision: np.ndarray | None = None) -> PsumPlan:
    """Reads, writes and live slots per output element for ``mode`` (see the module docstring).

    ``psum_bits`` is the stored width in ``psq``/``apsq``; ``none`` stores ``acc_bits`` (one width, or
    one per layer, e.g. the exact width ``16 + ceil(log2 K)``). ``full_precision`` (bool per layer):
    layers a quantized model left in full precision, planned as ``none`` at ``acc_bits`` in every mode.
    """
    if full_precision is not None and mode != "none" and np.any(full_precision):
        q = psum_plan(steps, mode, gs, psum_bits, acc_bits)
        b = psum_plan(steps, "none", gs, psum_bits, acc_bits)
        fp = np.asarray(full_precision, dtype=bool)
        return PsumPlan(mode, q.steps, np.where(fp, b.reads, q.reads), np.where(fp, b.writes, q.writes),
                        np.where(fp, b.slots, q.slots), np.where(fp, b.bits, q.bits).astype(np.int64))
    check_choice("mode", mode, PSUM_MODES)
    check_bits("psum_bits", psum_bits, lo=1, hi=64)
    steps = np.asarray(steps, dtype=np.int64)
    gs = np.broadcast_to(np.asarray(gs, dtype=np.int64), steps.shape)
    if (gs < 1).any():
        raise APSQError(f"gs must be >= 1, got {int(gs.min())}")
    if (steps < 1).any():
        raise APSQError("every layer needs at least one reduction step (K >= 1)")
    rw = steps - 1
    if mode == "none":
        if np.ndim(acc_bits):
            acc_bits = np.broadcast_to(np.asarray(acc_bits, dtype=np.int64), steps.shape)
            if (acc_bits < 1).any() or (acc_bits > 64).any():
                raise APSQError(f"baseline PSUM bits must be in 1..64, got {acc_bits.tolist()}")
        return PsumPlan(mode, steps, rw, rw, (steps > 1).astype(np.int64), acc_bits)
    if mode == "psq":
        return PsumPlan(mode, steps, rw, rw, rw, psum_bits)
    groups = ceil_div(steps, gs)
    slots = np.where(groups == 1, steps - 1, np.where(groups == 2, np.maximum(gs - 1, steps - gs), gs))
    return PsumPlan(mode, steps, rw, rw, slots, psum_bits)


SPILL_RULES = ("fractional", "all-or-nothing", "zigzag")
"""How a working set larger than its buffer is charged (``spill=``):

- ``fractional`` (apsq's default): a static allocation pins ``capacity`` bits of the working set on chip
  and the rest lives in DRAM, ``f = max(0, 1 - capacity / footprint)``;
- ``all-or-nothing`` (ZigZag's semantics): a working set that does not fit is not kept at that level at
  all, ``f = 1`` (every reuse goes to DRAM), else ``f = 0``;
- ``zigzag``: all-or-nothing plus ZigZag's count of stored PSUM accesses — ``n`` reads and ``n`` writes
  per output at the stored width when ``n > 1``, the final result read out at ``act_bits``. ZigZag's
  element counts are ``n - 1`` reads and ``n`` writes (the final result's write, which apsq sends to the
  output buffer at ``act_bits``, is at PSUM width); the ``n``-th read is in its word-access count, which is
  what it prices. For comparisons with ZigZag only.
"""


def refetch_fraction(footprint_bits: np.ndarray, capacity_bits: float | np.ndarray,
                     spill: str = "fractional") -> np.ndarray:
    """Share of a reused operand's (or live PSUMs') accesses that miss the buffer and go to DRAM.

    ``fractional``: ``f = max(0, 1 - capacity / footprint)``; ``all-or-nothing``: ``f = [footprint >
    capacity]`` (see :data:`SPILL_RULES`). Arrays over layers, values in [0, 1].
    """
    fp = np.asarray(footprint_bits, dtype=np.float64)
    if spill in ("all-or-nothing", "zigzag"):
        return (fp > capacity_bits).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(fp > 0, 1.0 - capacity_bits / np.where(fp > 0, fp, 1.0), 0.0)
    return np.clip(f, 0.0, 1.0)


@dataclass(frozen=True)
class GemmShapes:
    """Per-layer GEMM shapes and operand widths (arrays, held as float64).

    float64, not int64, so that no count can wrap: ``M·K·N·count`` of four dimensions of up to 2³¹
    (what :class:`~apsq.hw.workloads.Layer` accepts) is 2¹²⁴, far past int64 (2⁶³; ``m = k = n = 2²¹``
    gave a negative MAC energy). Every dimension and every product up to 2⁵³ is exact; beyond that a
    count is rounded to float64's 53 bits (relative error < 1e-15), never wrapped.
    """

    m: np.ndarray
    k: np.ndarray
    n: np.ndarray
    count: np.ndarray
    w_bits: np.ndarray
    act_bits: int

    def __post_init__(self) -> None:
        for f in ("m", "k", "n", "count", "w_bits"):
            object.__setattr__(self, f, np.asarray(getattr(self, f), dtype=np.float64))

    @property
    def macs(self) -> np.ndarray:
        return self.m * self.k * self.n * self.count


@dataclass(frozen=True)
class DataflowTerms:
    """What a dataflow decides, per GEMM instance (arrays over layers; elements, not bits)."""

    in_sram_reads: np.ndarray
    in_dram_reads: np.ndarray
    in_reg_writes: np.ndarray
    w_sram_reads: np.ndarray
    w_dram_reads: np.ndarray
    w_reg_writes: np.ndarray
    psum_live_outputs: np.ndarray  # outputs whose running PSUM is held in the PSUM buffer at once
    psum_lanes: np.ndarray  # outputs produced per array step (the smallest PSUM working set)
    compute_cycles: np.ndarray
    stores_psums: bool = True  # False: sums stay in the PEs (OS), no stored-PSUM traffic at all
    in_reg_reads: np.ndarray | None = None  # None: one per MAC (a streamed operand); stationary: per load
    w_reg_reads: np.ndarray | None = None
    exponent_reads: np.ndarray | None = None  # per-(tile step, output channel) exponent reads (psum_granularity="channel")


@dataclass(frozen=True)
class AccessCounts:
    """Element accesses and bit widths per layer x operand x level, plus MACs, cycles and spills."""

    reads: np.ndarray  # [L, 4, 3] elements
    writes: np.ndarray  # [L, 4, 3] elements
    bits: np.ndarray  # [L, 4, 3] bits per element
    macs: np.ndarray  # [L]
    cycles: np.ndarray  # [L] max(compute, each buffer's and DRAM's bandwidth bound)
    compute_cycles: np.ndarray  # [L]
    psum_footprint_bits: np.ndarray  # [L] live PSUM bits of one GEMM instance
    psum_spill: np.ndarray  # [L] share of stored-PSUM accesses that go to DRAM
    bound_by: np.ndarray | None = None  # [L] index into BOUNDS of the resource that sets `cycles`
    stored_psums: np.ndarray | None = None  # [L] stored-PSUM writes (codes produced by a requantization)
    exponent_reads: np.ndarray | None = None  # [L] per-channel PSUM exponent reads (x count)

    def take(self, idx: np.ndarray) -> AccessCounts:
        """The rows ``idx`` of every per-layer array (used by the mapper to keep its chosen candidates)."""
        def t(a):  # noqa: ANN001, ANN202
            return None if a is None else a[idx]
        return AccessCounts(self.reads[idx], self.writes[idx], self.bits[idx], self.macs[idx], self.cycles[idx],
                            self.compute_cycles[idx], self.psum_footprint_bits[idx], self.psum_spill[idx],
                            t(self.bound_by), t(self.stored_psums), t(self.exponent_reads))


BOUNDS = ("compute", "dram", "input port", "weight port", "psum port", "output port")
"""Resources whose cycle count can set a layer's latency (``AccessCounts.bound_by`` indexes these)."""


def assemble(name: str, g: GemmShapes, t: DataflowTerms, plan: PsumPlan, acc, layer_names,  # noqa: ANN001
             spill: str = "fractional", psum_capacity_bits: float | None = None) -> AccessCounts:
    """Fill the [layer, operand, level] tables from a dataflow's terms and the PSUM plan.

    Latency: ``cycles = max(compute, DRAM bits / DRAM bits per cycle, each buffer's bits / its port's
    bits per cycle)`` — every port is its own bound, so a PSUM port narrower than the dataflow's
    per-cycle PSUM traffic shows up as ``bound_by == "psum port"`` (``BOUNDS``).
    """
    L = len(g.m)
    reads = np.zeros((L, 4, 3))
    writes = np.zeros((L, 4, 3))
    bits = np.zeros((L, 4, 3))
    c = g.count.astype(np.float64)
    macs = g.macs.astype(np.float64)
    outputs = (g.m * g.n).astype(np.float64) * c

    # inputs and weights: DRAM -> SRAM (fill) -> PE registers; every MAC reads both from registers
    reads[:, IN, DRAM] = t.in_dram_reads * c
    writes[:, IN, SRAM] = t.in_dram_reads * c
    reads[:, IN, SRAM] = t.in_sram_reads * c
    writes[:, IN, REG] = t.in_reg_writes * c
    reads[:, IN, REG] = macs if t.in_reg_reads is None else t.in_reg_reads * c
    reads[:, WT, DRAM] = t.w_dram_reads * c
    writes[:, WT, SRAM] = t.w_dram_reads * c
    reads[:, WT, SRAM] = t.w_sram_reads * c
    writes[:, WT, REG] = t.w_reg_writes * c
    reads[:, WT, REG] = macs if t.w_reg_reads is None else t.w_reg_reads * c
    # an operand with no buffer (capacity 0) goes from DRAM straight to the PE registers: its DRAM reads
    # already equal its register loads (every reuse misses, f = 1), and no SRAM access is charged
    for op, buf in ((IN, acc.buffers.input), (WT, acc.buffers.weight)):
        if buf.capacity_kib == 0:
            reads[:, op, SRAM] = 0.0
            writes[:, op, SRAM] = 0.0
    # PSUMs: the in-PE accumulator is read and written once per MAC (INT32 in every mode)
    reads[:, PS, REG] = macs
    writes[:, PS, REG] = macs
    # stored PSUMs: the plan's traffic, split between the PSUM buffer and DRAM by the spill fraction
    cap = acc.buffers.psum.capacity_bits if psum_capacity_bits is None else psum_capacity_bits
    if not t.stores_psums:
        plan = PsumPlan(plan.mode, plan.steps, plan.reads * 0, plan.writes * 0, plan.slots * 0, plan.bits)
    live_bits = t.psum_live_outputs * plan.slots * plan.bits
    need = t.psum_lanes * plan.slots * plan.bits
    bad = (t.psum_live_outputs > 0) & (plan.slots > 0) & (need > cap)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise APSQError(
            f"{name}: the PSUM buffer ({acc.buffers.psum.capacity_kib} KiB) cannot hold even one PE-array tile of "
            f"layer {layer_names[i]!r}: {int(t.psum_lanes[i])} outputs x {int(plan.slots[i])} slot(s) x "
            f"{np.broadcast_to(plan.bits, bad.shape)[i]} bits "
            f"= {need[i] / 8192:.3f} KiB; enlarge buffers.psum.capacity_kib or lower gs / psum bits"
        )
    f_spill = refetch_fraction(live_bits, cap, spill)
    ps_r = outputs * plan.reads
    ps_w = outputs * plan.writes
    out_sram_w = outputs
    if spill == "zigzag" and t.stores_psums:  # ZigZag's word counting (SPILL_RULES)
        multi = plan.steps > 1
        ps_r = outputs * np.where(multi, plan.reads + 1, 0)
        ps_w = outputs * np.where(multi, plan.writes + 1, 0)
        out_sram_w = outputs * ~multi
    reads[:, PS, SRAM] = ps_r * (1 - f_spill)
    writes[:, PS, SRAM] = ps_w * (1 - f_spill)
    reads[:, PS, DRAM] = ps_r * f_spill
    writes[:, PS, DRAM] = ps_w * f_spill
    # outputs: requantized result -> output buffer -> DRAM
    writes[:, OUT, SRAM] = out_sram_w
    reads[:, OUT, SRAM] = outputs
    writes[:, OUT, DRAM] = outputs

    bits[:, IN, :] = g.act_bits
    bits[:, WT, :] = g.w_bits[:, None]
    bits[:, PS, REG] = acc.acc_bits
    bits[:, PS, SRAM] = plan.bits
    bits[:, PS, DRAM] = plan.bits
    bits[:, OUT, :] = g.act_bits

    traffic = (reads + writes) * bits  # [L, 4, 3] bits moved
    bounds = [t.compute_cycles * c, traffic[:, :, DRAM].sum(axis=1) / acc.dram_bits_per_cycle]
    for k, buf in enumerate((acc.buffers.input, acc.buffers.weight, acc.buffers.psum, acc.buffers.output)):
        bounds.append(traffic[:, k, SRAM] / buf.bits_per_cycle)
    stack = np.stack(bounds)
    cycles = np.max(stack, axis=0)
    loads = None if t.exponent_reads is None else t.exponent_reads * c
    return AccessCounts(reads, writes, bits, macs, cycles, t.compute_cycles * c, live_bits.astype(np.float64), f_spill,
                        np.argmax(stack, axis=0), ps_w, loads)
