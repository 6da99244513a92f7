"""Typed, validated accelerator description for the energy model (loaded from YAML).

Every field states its unit and meaning. The default constants (``src/apsq/accelerators/accel_28nm_int8.yaml``)
are derived from published figures, not fitted to the APSQ paper:

- Logic energy: Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, 0.9 V): 8-bit integer
  multiply 0.2 pJ, 32-bit integer add 0.1 pJ. An INT8 MAC with an INT32 accumulator is therefore
  0.3 pJ at 45 nm.
- SRAM: the same paper gives 10 pJ (8 KB), 20 pJ (32 KB) and 100 pJ (1 MB) per 64-bit access. These
  three points follow ``E64 = 10 pJ * sqrt(S / 8 KiB)`` within 13 %; :func:`sram_pj_per_bit` applies it
  to the size of one bank (an access touches one bank).
- Node scaling 45 nm -> 28 nm: dynamic energy C*V^2 with C proportional to feature size at the same
  0.9 V supply, i.e. a factor 28/45 = 0.622 (:func:`node_scale`). First-order on purpose; edit the YAML
  with foundry numbers when you have them.
- PE registers: Eyeriss (Chen, Emer, Sze, ISCA 2016) normalises a register-file access of a 16-bit
  word to 1x the energy of a MAC, so one register bit costs ``mac_pj / 16``.
- DRAM: Horowitz 2014 gives 1.3-2.6 nJ per 64-bit access; we take the low end, 1.3 nJ / 64 bit =
  20.3 pJ/bit, not node-scaled (DRAM is a separate chip). Bandwidth: one LPDDR4-3200 x32 channel,
  12.8 GB/s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from apsq.errors import APSQError, read_yaml

__all__ = [
    "Accelerator",
    "Buffer",
    "DRAM",
    "DRAM_PRESETS",
    "RAE",
    "BUILTIN_ACCELERATORS",
    "with_dram",
    "PEArray",
    "DEFAULT_ACCELERATOR",
    "default_accelerator",
    "load_accelerator",
    "node_scale",
    "sram_pj_per_bit",
    "mac_pj",
]

DEFAULT_ACCELERATOR = "accel_28nm_int8.yaml"
HOROWITZ_NODE_NM = 45.0
HOROWITZ_MUL8_PJ = 0.2  # 8-bit int multiply, 45 nm (Horowitz ISSCC 2014)
HOROWITZ_ADD32_PJ = 0.1  # 32-bit int add, 45 nm (Horowitz ISSCC 2014)
HOROWITZ_SRAM8K_PJ_PER_64B = 10.0  # 8 KB SRAM, 64-bit access, 45 nm (Horowitz ISSCC 2014)


def node_scale(node_nm: float, ref_nm: float = HOROWITZ_NODE_NM) -> float:
    """First-order dynamic-energy scale factor from ``ref_nm`` to ``node_nm`` (C ~ L, same V)."""
    if node_nm <= 0 or ref_nm <= 0:
        raise APSQError(f"technology node must be > 0 nm, got {node_nm} (reference {ref_nm})")
    return node_nm / ref_nm


def mac_pj(node_nm: float) -> float:
    """INT8 x INT8 multiply + INT32 accumulate energy (pJ) at ``node_nm`` (Horowitz 2014, scaled)."""
    return (HOROWITZ_MUL8_PJ + HOROWITZ_ADD32_PJ) * node_scale(node_nm)


def sram_pj_per_bit(bank_kib: float, node_nm: float) -> float:
    """SRAM access energy per bit (pJ/bit) of one bank of ``bank_kib`` KiB at ``node_nm``.

    ``E64 = 10 pJ * sqrt(S / 8 KiB)`` per 64-bit access at 45 nm (fits Horowitz's 8 KB / 32 KB / 1 MB
    points within 13 %), divided by 64 bits and scaled by :func:`node_scale`.
    """
    if bank_kib <= 0:
        raise APSQError(f"bank size must be > 0 KiB, got {bank_kib}")
    return HOROWITZ_SRAM8K_PJ_PER_64B * math.sqrt(bank_kib / 8.0) / 64.0 * node_scale(node_nm)


class _Strict(BaseModel):
    # finite numbers only: `.inf` / `.nan` in a YAML file are refused (they made latency NaN)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, v: Any, info: ValidationInfo) -> Any:
        """A YAML ``true`` is not a number (pydantic would read it as 1)."""
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        ann = field.annotation if field is not None else None
        if isinstance(v, bool) and ann is not bool and bool not in get_args(ann):
            raise ValueError(f"expected a number or text, got the boolean {v!r}")
        return v


MAX_PES = 1 << 16
"""Upper bound of PE rows / columns, banks and port widths (sane finite ranges for input files)."""
MAX_PJ = 1e6
"""Upper bound of any per-operation / per-bit energy, pJ."""


class PEArray(_Strict):
    """The MAC array. In IS/WS its ``rows`` reduce K (the PSUM tile); in OS rows map output rows (M)."""

    rows: int = Field(gt=0, le=MAX_PES, description="PE rows; the reduction depth (K elements per PSUM step) in IS/WS")
    cols: int = Field(gt=0, le=MAX_PES, description="PE columns; parallel outputs per step (N in WS, M in IS, N in OS)")
    mac_pj: float = Field(ge=0, le=MAX_PJ, description="energy of one INT8 multiply + INT32 accumulate, pJ")
    reg_pj_per_bit: float = Field(ge=0, le=MAX_PJ,
                                  description="PE register (pipeline/stationary/accumulator) access, pJ/bit")
    input_reg_pj_per_bit: float | None = Field(None, ge=0, le=MAX_PJ,
                                               description="input register access, pJ/bit (default reg_pj_per_bit)")
    weight_reg_pj_per_bit: float | None = Field(None, ge=0, le=MAX_PJ,
                                                description="weight register access, pJ/bit (default reg_pj_per_bit)")
    acc_reg_pj_per_bit: float | None = Field(None, ge=0, le=MAX_PJ,
                                             description="in-PE accumulator access, pJ/bit (default reg_pj_per_bit)")

    def reg_pj(self, operand: str) -> float:
        """Register energy (pJ/bit) of ``operand`` (``input``, ``weight``, ``psum``, ``output``)."""
        own = {"input": self.input_reg_pj_per_bit, "weight": self.weight_reg_pj_per_bit,
               "psum": self.acc_reg_pj_per_bit}.get(operand)
        return self.reg_pj_per_bit if own is None else own


class RAE(_Strict):
    """Energy of the RAE's logic per stored PSUM (APSQ / PSQ modes only; the INT32 baseline has none).

    Every stored PSUM code is produced by one requantization (an exponent shift and a rounding add;
    the clamp is a comparison folded into the rounding) and consumed by one accumulation (an alignment
    shift and an add). Defaults: Horowitz ISSCC 2014, 45 nm: 32-bit add 0.1 pJ; a barrel shifter is
    taken as one 32-bit add (same class of logic, an estimate); both x 28/45 for 28 nm = 0.0622 pJ.
    """

    shift_pj: float = Field(0.0622, ge=0, le=MAX_PJ, description="one 32-bit shift, pJ")
    add_pj: float = Field(0.0622, ge=0, le=MAX_PJ, description="one 32-bit add, pJ")
    exponent_bits: int = Field(8, ge=1, le=32,
                               description="width of one stored PSUM exponent (psum_granularity='channel'), bits")

    @property
    def requant_pj(self) -> float:
        """Energy to requantize one PSUM into a stored code (shift + rounding add), pJ."""
        return self.shift_pj + self.add_pj

    @property
    def accumulate_pj(self) -> float:
        """Energy to align and add one stored code back into the running sum (shift + add), pJ."""
        return self.shift_pj + self.add_pj


class Buffer(_Strict):
    """One on-chip SRAM buffer (banked)."""

    capacity_kib: float = Field(ge=0, le=1 << 30, description="capacity, KiB (1 KiB = 8192 bits; at most 1 TiB)")
    banks: int = Field(gt=0, le=MAX_PES, description="independent banks; one access touches one bank")
    word_bits: int = Field(gt=0, le=MAX_PES, description="bits per bank access (port width)")
    read_pj_per_bit: float = Field(ge=0, le=MAX_PJ, description="read energy, pJ/bit")
    write_pj_per_bit: float = Field(ge=0, le=MAX_PJ, description="write energy, pJ/bit")

    @property
    def capacity_bits(self) -> float:
        return self.capacity_kib * 8192.0

    @property
    def bits_per_cycle(self) -> int:
        """Peak bandwidth, bits per clock cycle (all banks in parallel)."""
        return self.banks * self.word_bits


class DRAM(_Strict):
    """Off-chip memory."""

    read_pj_per_bit: float = Field(ge=0, le=MAX_PJ, description="read energy incl. I/O, pJ/bit")
    write_pj_per_bit: float = Field(ge=0, le=MAX_PJ, description="write energy incl. I/O, pJ/bit")
    bandwidth_gbs: float = Field(gt=0, le=1e6, description="sustained bandwidth, GB/s (1e9 bytes/s)")


class Buffers(_Strict):
    """The four operand buffers."""

    input: Buffer = Field(description="input (activation) buffer")
    weight: Buffer = Field(description="weight buffer")
    psum: Buffer = Field(description="PSUM buffer (the RAE's banks in APSQ mode)")
    output: Buffer = Field(description="output buffer (final INT8 activations)")


class Accelerator(_Strict):
    """A PE array with per-operand buffers and DRAM; everything the energy model needs."""

    name: str = Field(description="a label for reports")
    technology_nm: float = Field(gt=0, le=10_000, description="process node, nm (documentation; constants are explicit)")
    clock_mhz: float = Field(ge=1e-3, le=1e5, description="clock frequency, MHz (1 kHz .. 100 GHz)")
    act_bits: int = Field(ge=1, le=32, description="activation (input/output) width, bits")
    weight_bits: int = Field(ge=1, le=32, description="weight width, bits")
    acc_bits: int = Field(ge=1, le=64, description="in-PE accumulator and baseline PSUM width, bits (INT32)")
    pe_array: PEArray
    buffers: Buffers
    dram: DRAM
    rae: RAE = Field(default_factory=RAE, description="RAE logic energies (APSQ overhead)")
    shared_sram: tuple[Literal["input", "weight", "psum", "output"], ...] | None = Field(
        None,
        description="buffers that are one physical SRAM (for the ZigZag conversion: one memory of their summed "
        "capacity); the energy model keeps their capacities as a static partition",
    )

    @model_validator(mode="after")
    def _acc_wide_enough(self) -> Accelerator:
        if self.acc_bits < self.act_bits + self.weight_bits:
            raise ValueError(
                f"acc_bits ({self.acc_bits}) must be >= act_bits + weight_bits "
                f"({self.act_bits + self.weight_bits}) to hold one product"
            )
        self._check_shared_sram()
        return self

    def _check_shared_sram(self) -> None:
        """The buffers of ``shared_sram`` are one physical SRAM: named once each, at least two, and (those
        with a capacity) at one read and one write energy. The ZigZag conversion builds the one memory from
        the first buffer's energies, so differing ones were silently replaced there while this model kept them."""
        names = self.shared_sram
        if names is None:
            return
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"shared_sram names the buffers that are one SRAM: at least two, each once; got {list(names)}")
        live = [b for b in names if getattr(self.buffers, b).capacity_kib > 0]
        for attr in ("read_pj_per_bit", "write_pj_per_bit"):
            vals = {b: getattr(getattr(self.buffers, b), attr) for b in live}
            if len(set(vals.values())) > 1:
                shown = ", ".join(f"buffers.{b}.{attr} = {v}" for b, v in vals.items())
                raise ValueError(f"shared_sram {list(names)} is one SRAM, but its buffers have different energies "
                                 f"({shown}): give them one {attr}, or drop shared_sram")

    @property
    def dram_bits_per_cycle(self) -> float:
        return self.dram.bandwidth_gbs * 8e9 / (self.clock_mhz * 1e6)

    @classmethod
    def from_dict(cls, data: Any, source: str = "accelerator") -> Accelerator:
        """Validate a mapping; errors name the offending field (dotted path)."""
        if not isinstance(data, dict):
            raise APSQError(f"{source}: an accelerator description must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
                lines.append(f"field '{loc}': {err['msg']}")
            raise APSQError(f"{source}: invalid accelerator description: " + "; ".join(lines)) from None


def _configs_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "accelerators"


BUILTIN_ACCELERATORS: dict[str, str] = {
    "default": DEFAULT_ACCELERATOR,
    "apsq-28nm-int8": DEFAULT_ACCELERATOR,
    "zigzag-tpu-like": "zigzag_tpu_like.yaml",
    "zigzag-tpu-like-is": "zigzag_tpu_like_is.yaml",
    "worked-example": "worked_example.yaml",
}
"""Accelerators selectable by name (``--accelerator NAME``); anything else is read as a YAML path."""

DRAM_PRESETS: dict[str, tuple[float, str]] = {
    "ddr3": (20.31, "Horowitz ISSCC 2014: 1.3-2.6 nJ per 64-bit DRAM access, low end (1.3 nJ / 64 b)"),
    "ddr4": (15.0, "DDR4-class estimate incl. I/O (Micron DDR4 power calculator TN-40-07 class figure); approximate"),
    "lpddr4": (5.0, "LPDDR4-class estimate incl. I/O (mobile DRAM, low-swing I/O); approximate"),
    "hbm2": (3.9, "O'Connor et al., 'Fine-Grained DRAM', MICRO 2017: HBM2 3.9 pJ/bit"),
    "zigzag": (700 / 64, "ZigZag tpu_like.yaml: 700 pJ read / 750 pJ write per 64-bit DRAM access (read energy)"),
}
"""DRAM energy presets, pJ/bit (read = write), with the figure's source (``--dram NAME``)."""


def with_dram(acc: Accelerator, preset: str) -> Accelerator:
    """``acc`` with both DRAM energies set to ``DRAM_PRESETS[preset]`` (bandwidth unchanged)."""
    if preset not in DRAM_PRESETS:
        raise APSQError(f"dram preset must be one of {', '.join(map(repr, DRAM_PRESETS))}; got {preset!r}")
    pj = DRAM_PRESETS[preset][0]
    d = acc.model_dump()
    d["dram"]["read_pj_per_bit"] = d["dram"]["write_pj_per_bit"] = pj
    d["name"] = f"{acc.name}+{preset}"
    return Accelerator.from_dict(d, source=f"accelerator {acc.name!r} with dram preset {preset!r}")


def load_accelerator(path: str | Path | None = None) -> Accelerator:
    """Load an accelerator YAML; ``None`` loads the packaged default 28 nm INT8 accelerator.

    ``path`` may also be a built-in name (:data:`BUILTIN_ACCELERATORS`, e.g. ``zigzag-tpu-like``).

    Raises:
        APSQError: a name that is no built-in and no existing file (listing the built-ins), a missing or
            malformed YAML file, a field out of range.
    """
    if isinstance(path, (str, Path)) and str(path) in BUILTIN_ACCELERATORS and not Path(path).is_file():
        path = _configs_dir() / BUILTIN_ACCELERATORS[str(path)]
    if path is not None and not Path(path).is_file():
        raise APSQError(f"accelerator {str(path)!r} does not exist" + (" (it is a folder)" if Path(path).is_dir() else "")
                        + f": give a built-in ({', '.join(BUILTIN_ACCELERATORS)}) or an accelerator YAML file")
    p = _configs_dir() / DEFAULT_ACCELERATOR if path is None else Path(path)
    data = read_yaml(p, "accelerator file")
    return Accelerator.from_dict(data, source=f"accelerator file {str(p)!r}")


_DEFAULT: Accelerator | None = None


def default_accelerator() -> Accelerator:
    """The packaged default (cached; the object is immutable)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_accelerator(None)
    return _DEFAULT
