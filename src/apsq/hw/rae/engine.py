"""The Reconfigurable APSQ Engine (RAE) as synthesizable Amaranth RTL.

Method doc section 7; encodings, pipeline and bank schedule are documented in ``docs/rae.md``.
Per lane the engine computes exactly :func:`apsq.integer.psum.psum_accumulate_int` (``mode='apsq'``):

* the four banks form ``floor(4 / gs)`` sets of ``gs`` banks (set ``b`` = banks ``b*gs .. b*gs+gs-1``);
  output position ``q`` lives in set ``q // depth`` at address ``q % depth``;
* a plain step (``s2 = 0``) quantizes the tile sum, ``c = clamp(floor(T / 2^e + 1/2))``, and writes
  the pending code to bank ``slot`` of its set (the tile's position in its group);
* a group-closing step (``s2 = 1``, forced when ``slot == gs - 1`` or on the layer's last step) reads
  the ``slot`` pending codes and the previous ``A`` (bank ``gs - 1`` of the set), aligns every stored
  code by a left shift of its own exponent, adds them with the tile sum in a two-stage adder and
  requantizes with a round-half-up right shift and a clamp; the code is written back as ``A``.

Alignment: every value is carried with ``FB = frac_bits`` fraction bits (a static grid): the tile sum
enters as ``T << FB``, a code stored with exponent ``e_j`` as ``c << (e_j + FB)``, and requantizing is
a right shift by ``e + FB``. All shift amounts are ``shift_bits``-bit unsigned signals, so the engine
accepts exponents ``e`` in ``[-FB, 2^shift_bits - 1 - FB]`` (default ``[-8, 23]``). Because every
term is an exact integer on that grid, the result equals the golden model's (which uses
``F = max(0, -min e)`` fraction bits) bit for bit: both compute ``clamp(floor(V / 2^e + 1/2))`` of the
same exact dyadic value ``V``.

Exponents per step (``lane_exponents=False``, per-tensor PSUM steps): the input beat carries one
exponent, and each bank's exponent is one ``shift_bits`` register shared by all lanes and positions.
Per lane (``lane_exponents=True``, per-channel PSUM steps, one exponent per tile step and output
channel): the beat carries one exponent per lane, every lane requantizes with its own shift, and each
bank gets a twin *exponent bank* (``depth x L x shift_bits`` bits) written with the code, because the
positions of a step hold different output channels and so different exponents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from apsq.config import RAE_BANKS, rae_exponent_range
from apsq.errors import APSQError, check_bits, check_int

__all__ = ["RAEParams", "RAE", "NUM_BANKS", "PIPELINE_LATENCY", "check_gs"]

NUM_BANKS = RAE_BANKS
"""SRAM banks: ``gs - 1`` pending codes plus the running ``A`` -> ``gs <= 4`` (:data:`apsq.config.RAE_BANKS`,
where every gs limit is stated)."""


def check_gs(gs: object) -> int:
    """``gs`` as the engine runs it: an integer in ``[1, NUM_BANKS]``. A group keeps its ``gs - 1`` pending
    codes and its running sum in the PSUM banks, so the limit is the bank count; the error says so."""
    try:
        return check_int("gs", gs, lo=1, hi=NUM_BANKS)
    except APSQError as exc:
        raise APSQError(f"{exc}: the RAE keeps a group's gs - 1 pending codes and its running sum in its "
                        f"{NUM_BANKS} PSUM banks, so gs is at most {NUM_BANKS}") from None


PIPELINE_LATENCY = 3
"""Cycles from an accepted input beat to its output code: bank read, adder stage 1, adder stage 2 +
requantize (the output register is loaded at the end of the third cycle)."""


@dataclass(frozen=True)
class RAEParams:
    """Static (elaboration-time) parameters of one engine instance.

    Attributes:
        lanes: parallel output lanes ``L`` (PE-array columns).
        depth: words per SRAM bank; a word is ``L`` codes. The engine holds
            :meth:`capacity` ``= floor(4 / gs) * depth`` output positions at once.
        bits: PSUM code width (INT``bits``, 2..16).
        tile_bits: width of the signed tile-sum inputs (32 in the paper).
        frac_bits: fraction bits ``FB`` of the internal grid: the most negative exponent is ``-FB``.
        shift_bits: width of every shift amount ``e + FB``: the largest exponent is
            ``2^shift_bits - 1 - FB``.
        lane_exponents: one exponent per lane and step (per-channel PSUM steps) instead of one per
            step; adds the exponent banks (``4 x depth x L x shift_bits`` bits) and per-lane shift
            registers.
    """

    lanes: int = 4
    depth: int = 16
    bits: int = 8
    tile_bits: int = 32
    frac_bits: int = 8
    shift_bits: int = 5
    lane_exponents: bool = False

    def __post_init__(self) -> None:
        check_int("lanes", self.lanes, lo=1, hi=1024)
        check_int("depth", self.depth, lo=2, hi=1 << 16)
        check_bits("bits", self.bits)
        check_int("tile_bits", self.tile_bits, lo=2, hi=64)
        check_int("shift_bits", self.shift_bits, lo=1, hi=7)
        check_int("frac_bits", self.frac_bits, lo=0, hi=(1 << self.shift_bits) - 1)
        if not isinstance(self.lane_exponents, bool):
            raise APSQError(f"lane_exponents must be True or False, got {self.lane_exponents!r}")

    @property
    def exp_min(self) -> int:
        """Smallest accepted per-step exponent ``e`` (a left shift by ``-e``)."""
        return rae_exponent_range(self.frac_bits, self.shift_bits)[0]

    @property
    def exp_max(self) -> int:
        """Largest accepted per-step exponent ``e`` (a right shift by ``e``)."""
        return rae_exponent_range(self.frac_bits, self.shift_bits)[1]

    @property
    def exp_width(self) -> int:
        """Width of the signed exponent field of the input payload."""
        return max(self.exp_min.bit_length(), self.exp_max.bit_length()) + 1

    @property
    def tile_min(self) -> int:
        return -(1 << (self.tile_bits - 1))

    @property
    def tile_max(self) -> int:
        return (1 << (self.tile_bits - 1)) - 1

    @property
    def acc_width(self) -> int:
        """Signed width of the internal sum ``V * 2^FB``: one tile sum plus four aligned codes."""
        max_shift = (1 << self.shift_bits) - 1
        mag = (1 << (self.tile_bits - 1 + self.frac_bits)) + NUM_BANKS * (1 << (self.bits - 1 + max_shift))
        return mag.bit_length() + 1

    def capacity(self, gs: int) -> int:
        """Output positions the banks hold at group size ``gs``: ``floor(4 / gs) * depth``.

        A group needs ``gs`` banks (``gs - 1`` pending codes + ``A``), so the four banks form
        ``floor(4 / gs)`` independent sets — the PSUM storage per output is ``gs`` codes.
        """
        check_gs(gs)
        return (NUM_BANKS // gs) * self.depth

    @property
    def bank_bits(self) -> int:
        """SRAM bits of the four code banks plus, with ``lane_exponents``, the four exponent banks."""
        per_word = self.lanes * (self.bits + (self.shift_bits if self.lane_exponents else 0))
        return NUM_BANKS * self.depth * per_word

    def in_layout(self) -> data.StructLayout:
        """Input beat: ``tile`` [L] signed tile sums, ``exp`` (signed; [L] with ``lane_exponents``),
        ``s2`` (closing), ``last``."""
        exp = data.ArrayLayout(signed(self.exp_width), self.lanes) if self.lane_exponents else signed(self.exp_width)
        return data.StructLayout({
            "tile": data.ArrayLayout(signed(self.tile_bits), self.lanes),
            "exp": exp,
            "s2": unsigned(1),
            "last": unsigned(1),
        })

    def out_layout(self) -> data.StructLayout:
        """Output beat: the layer's final codes, ``code`` [L] signed ``bits``."""
        return data.StructLayout({"code": data.ArrayLayout(signed(self.bits), self.lanes)})


class RAE(wiring.Component):
    """Reconfigurable APSQ Engine: L lanes, four code banks, shifters, two-stage adder.

    Ports (besides ``clk``/``rst``):
        s0, s1: static group-size encoding, ``gs = 1 + s0 + 2 * s1`` (change only while idle).
        last_pos: static, number of output positions per step minus one (``M - 1``,
            ``M <= capacity(gs) = floor(4 / gs) * depth``: banks a group does not use hold more
            positions — position ``q`` uses bank set ``q // depth``, address ``q % depth``).
        i: stream of input beats (one per position per step, positions ``0..M-1`` in order, steps in
            order); ``i.ready`` may depend combinationally on ``i.valid``/``i.payload`` (hazard stall).
        o: stream of output beats, one per position of the layer's last step (``last = 1``).
        busy: a beat is in flight (the pipeline or the output register holds one).
        bank_rd, bank_wr: activity, one bit per bank: the bank's read / write enable this cycle (a
            word of ``L`` codes, and with ``lane_exponents`` its exponent word). A bank is read only
            by a closing beat, for a pending code or ``A``; a code is written on every step but the
            layer's last (whose result leaves through ``o``), so a layer of ``n`` steps reads and
            writes each output position ``n - 1`` times (``docs/rae.md``, activity counts).
        rq, acc: activity: stage 2 requantizes a beat this cycle (all ``L`` lanes); that beat closes
            a group (its tile sum was added to the codes read).
    """

    def __init__(self, params: RAEParams | None = None, **kwargs: Any) -> None:
        if params is None:
            params = RAEParams(**kwargs)
        elif kwargs:
            raise APSQError("pass either params or keyword parameters, not both")
        self.params = params
        p = params
        self.banks: list[memory.Memory] = []  # the four code banks, created by elaborate()
        self.exp_banks: list[memory.Memory] = []  # their exponent twins (lane_exponents only)
        super().__init__({
            "s0": In(1),
            "s1": In(1),
            "last_pos": In(range(NUM_BANKS * p.depth)),
            "i": In(stream.Signature(p.in_layout())),
            "o": Out(stream.Signature(p.out_layout())),
            "busy": Out(1),
            "bank_rd": Out(NUM_BANKS),
            "bank_wr": Out(NUM_BANKS),
            "rq": Out(1),
            "acc": Out(1),
        })

    def elaborate(self, platform: object) -> Module:  # noqa: PLR0915 - one datapath, kept together
        p = self.params
        m = Module()
        lanes, sb, fb = p.lanes, p.shift_bits, p.frac_bits
        qn, qp = -(1 << (p.bits - 1)), (1 << (p.bits - 1)) - 1
        w = p.acc_width

        # ---- banks: one write port, one read port (transparent for the write port) each ----
        word = data.ArrayLayout(signed(p.bits), p.lanes)
        self.banks = [memory.Memory(shape=word, depth=p.depth, init=[]) for _ in range(NUM_BANKS)]
        wports, rports = [], []
        for k, mem in enumerate(self.banks):
            m.submodules[f"bank{k}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(domain="sync", transparent_for=(wp,))
            wports.append(wp)
            rports.append(rp)
        # per-lane exponents: each code bank has a twin holding e + FB of every stored code
        ewports, erports = [], []
        if p.lane_exponents:
            eword = data.ArrayLayout(unsigned(sb), p.lanes)
            self.exp_banks = [memory.Memory(shape=eword, depth=p.depth, init=[]) for _ in range(NUM_BANKS)]
            for k, mem in enumerate(self.exp_banks):
                m.submodules[f"exp_bank{k}"] = mem
                wp = mem.write_port()
                ewports.append(wp)
                erports.append(mem.read_port(domain="sync", transparent_for=(wp,)))

        gs_m1 = Signal(2)  # gs - 1, from the static encodings s1 s0
        m.d.comb += gs_m1.eq(Cat(self.s0, self.s1))

        # ---- step-level state (advances when the last position of a step is accepted) ----
        # position of the next input beat, and the same as (bank set, bank address): pos = bset*depth + addr
        pos = Signal(range(NUM_BANKS * p.depth))
        addr = Signal(range(p.depth))
        bset = Signal(2)
        slot = Signal(2)  # position of the current step in its group
        have_a = Signal()  # an A from an earlier group is stored (A_{-1} = 0 otherwise)
        # per step: e + FB of each bank's contents (one register per bank; per lane, the exponent banks)
        bsh = [] if p.lane_exponents else [Signal(sb, name=f"bank{k}_shift") for k in range(NUM_BANKS)]
        n_sh = lanes if p.lane_exponents else 1  # shift amounts carried per beat

        # ---- pipeline registers ----
        v1, v2 = Signal(), Signal()
        pos1 = Signal.like(pos)
        addr1, addr2 = Signal.like(addr), Signal.like(addr)
        tile1 = [Signal(signed(p.tile_bits), name=f"tile1_{lane}") for lane in range(lanes)]
        sh1 = [Signal(sb, name=f"sh1_{j}") for j in range(n_sh)]
        sh2 = [Signal(sb, name=f"sh2_{j}") for j in range(n_sh)]
        rsh1 = [Signal(sb, name=f"rsh1_{k}") for k in range(len(bsh))]
        rmask1 = Signal(NUM_BANKS)
        wbank1, wbank2 = Signal(2), Signal(2)
        last1, last2 = Signal(), Signal()
        closing1, closing2 = Signal(), Signal()
        p0 = [Signal(signed(w), name=f"p0_{lane}") for lane in range(lanes)]
        p1 = [Signal(signed(w), name=f"p1_{lane}") for lane in range(lanes)]

        # ---- stage 0: accept, hazard check, bank read issue ----
        pay = self.i.payload
        sh0 = [Signal(sb, name=f"sh0_{j}") for j in range(n_sh)]
        for j in range(n_sh):  # truncated to shift_bits: exponent range checked by the driver
            m.d.comb += sh0[j].eq((pay.exp[j] if p.lane_exponents else pay.exp) + fb)
        closing0 = Signal()
        m.d.comb += closing0.eq(pay.s2 | pay.last | (slot == gs_m1))
        # bank set: gs = 1 -> 4 sets of 1 bank, gs = 2 -> 2 sets of 2, gs = 3, 4 -> 1 set (base 0)
        base0 = Signal(2)
        m.d.comb += base0.eq(Mux(gs_m1 == 0, bset, Mux(gs_m1 == 1, bset << 1, 0)))
        pend_end = Signal(3)  # pending codes of this group sit in banks base0 .. pend_end - 1
        m.d.comb += pend_end.eq(base0 + slot)
        a_bank = Signal(3)  # the running A of this group's set
        m.d.comb += a_bank.eq(base0 + gs_m1)
        rmask0 = Signal(NUM_BANKS)
        for k in range(NUM_BANKS):
            from_base = (base0 <= k) if k < NUM_BANKS - 1 else Const(1, 1)  # base0 <= 3: no CMPCONST
            pending = from_base & (Const(k, 3) < pend_end)
            m.d.comb += rmask0[k].eq(closing0 & (pending | ((a_bank == k) & have_a)))
        wslot0 = Signal(2)  # bank within the set: the A bank when closing, else the next pending slot
        m.d.comb += wslot0.eq(Mux(closing0, gs_m1, slot))
        wbank0 = Signal(2)
        m.d.comb += wbank0.eq(base0 + wslot0)

        adv = Signal()  # the whole pipeline advances (the output register can take a beat)
        m.d.comb += adv.eq(~self.o.valid | self.o.ready)
        hazard = Signal()  # a closing read of a word the beat in stage 1 has yet to write
        m.d.comb += hazard.eq(closing0 & v1 & (pos1 == pos))
        m.d.comb += self.i.ready.eq(adv & ~hazard)
        accept = Signal()
        m.d.comb += accept.eq(self.i.valid & self.i.ready)
        # a bank is read only for a closing beat, and only the banks it adds (pending codes, A)
        m.d.comb += self.bank_rd.eq(Mux(accept, rmask0, 0))
        for k, rp in enumerate(rports):
            m.d.comb += [rp.addr.eq(addr), rp.en.eq(self.bank_rd[k])]
        for k, rp in enumerate(erports):
            m.d.comb += [rp.addr.eq(addr), rp.en.eq(self.bank_rd[k])]

        step_end = Signal()
        m.d.comb += step_end.eq(pos == self.last_pos)
        with m.If(accept):
            with m.If(step_end):
                m.d.sync += [pos.eq(0), addr.eq(0), bset.eq(0)]
                for k in range(len(bsh)):  # the step wrote slot wslot0 of every set: bank k = wslot0 (mod gs)
                    k_mod_gs = Array([Const(k % g, 2) for g in range(1, NUM_BANKS + 1)])[gs_m1]
                    with m.If(k_mod_gs == wslot0):
                        m.d.sync += bsh[k].eq(sh0[0])
                with m.If(pay.last):
                    m.d.sync += [slot.eq(0), have_a.eq(0)]
                with m.Elif(closing0):
                    m.d.sync += [slot.eq(0), have_a.eq(1)]
                with m.Else():
                    m.d.sync += slot.eq(slot + 1)
            with m.Else():
                m.d.sync += pos.eq(pos + 1)
                with m.If(addr == p.depth - 1):
                    m.d.sync += [addr.eq(0), bset.eq(bset + 1)]
                with m.Else():
                    m.d.sync += addr.eq(addr + 1)

        with m.If(adv):
            m.d.sync += v1.eq(accept)
        with m.If(accept):
            m.d.sync += [pos1.eq(pos), addr1.eq(addr), rmask1.eq(rmask0), wbank1.eq(wbank0)]
            m.d.sync += [sh1[j].eq(sh0[j]) for j in range(n_sh)]
            m.d.sync += [last1.eq(pay.last), closing1.eq(closing0)]
            m.d.sync += [tile1[lane].eq(pay.tile[lane]) for lane in range(lanes)]
            m.d.sync += [rsh1[k].eq(bsh[k]) for k in range(len(bsh))]

        # ---- stage 1: align (left shifts) and first adder level ----
        with m.If(adv):
            m.d.sync += [v2.eq(v1), addr2.eq(addr1), wbank2.eq(wbank1), last2.eq(last1), closing2.eq(closing1)]
            m.d.sync += [sh2[j].eq(sh1[j]) for j in range(n_sh)]
            for lane in range(lanes):
                x = []
                for k in range(NUM_BANKS):
                    code = rports[k].data[lane]
                    shift = erports[k].data[lane] if p.lane_exponents else rsh1[k]
                    x.append(Mux(rmask1[k], code << shift, 0))
                m.d.sync += [
                    p0[lane].eq((tile1[lane] << fb) + x[0] + x[1]),
                    p1[lane].eq(x[2] + x[3]),
                ]

        # ---- stage 2: second adder level, round-half-up right shift, clamp, write back ----
        codes = []
        for lane in range(lanes):
            v = Signal(signed(w + 1), name=f"v_{lane}")
            r = Signal(signed(w + 2), name=f"r_{lane}")
            c = Signal(signed(p.bits), name=f"code_{lane}")
            # floor(v / 2^sh + 1/2) = (((2v) >> sh) + 1) >> 1, valid for every sh >= 0
            m.d.comb += [
                v.eq(p0[lane] + p1[lane]),
                r.eq((((v << 1) >> sh2[lane if p.lane_exponents else 0]) + 1) >> 1),
                c.eq(Mux(r > qp, qp, Mux(r < qn, qn, r))),
            ]
            codes.append(c)
        # requantize every beat; write its code back unless it is the layer's last step (that code
        # leaves through the output register and is never read again)
        m.d.comb += [self.rq.eq(v2 & adv), self.acc.eq(v2 & adv & closing2)]
        for k in range(NUM_BANKS):
            m.d.comb += self.bank_wr[k].eq(v2 & adv & ~last2 & (wbank2 == k))
        for k, wp in enumerate(wports):
            m.d.comb += [wp.addr.eq(addr2), wp.en.eq(self.bank_wr[k])]
            m.d.comb += [wp.data[lane].eq(codes[lane]) for lane in range(lanes)]
        for k, wp in enumerate(ewports):
            m.d.comb += [wp.addr.eq(addr2), wp.en.eq(self.bank_wr[k])]
            m.d.comb += [wp.data[lane].eq(sh2[lane]) for lane in range(lanes)]

        # ---- output register ----
        with m.If(adv):
            m.d.sync += self.o.valid.eq(v2 & last2)
            m.d.sync += [self.o.payload.code[lane].eq(codes[lane]) for lane in range(lanes)]
        m.d.comb += self.busy.eq(v1 | v2 | self.o.valid)
        return m
