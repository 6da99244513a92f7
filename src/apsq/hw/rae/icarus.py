"""Run the *exported Verilog* of the RAE in Icarus Verilog (a second, independent simulator).

:func:`run_layers_icarus` feeds the packed beats of :func:`apsq.hw.rae.beats.build_schedule` to
``rae.v`` through a small Verilog testbench (``templates/icarus_tb.v``, package data: stimulus via
``$readmemh``, a synchronous producer/consumer, optional pseudo-random ``o__ready`` back-pressure) and
parses the output codes. This checks the Verilog that a tool flow would consume, not only the Amaranth
model. Backend ``icarus`` of :func:`apsq.hw.rae.sim.run_layers` (:func:`run_layers_icarus_stats`).

Compiled with ``iverilog -g2005``, not ``-g2012``: Yosys's Verilog back end starts every
``always @*`` block with a dummy register initialised in its declaration
(``reg \$auto$verilog_backend... = 0``) so that the block runs at time 0. In SystemVerilog mode Icarus
applies declaration initialisers before any process starts (no event), so a block whose inputs never
change (e.g. the ``k mod gs`` table at ``gs = 1``, where ``s0 = s1 = 0`` throughout) keeps ``x`` and
the simulation goes wrong. In Verilog-2005 mode the initialiser is an event and all is well. (Lint
still uses ``-g2012``; synthesis and Verilator are unaffected.)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from amaranth.hdl import Shape

from apsq.errors import APSQError
from apsq.hw.rae.beats import Activity, EnginePass, LayerJob, RunStats, build_schedule, scatter_outputs, unpack_out
from apsq.hw.rae.engine import NUM_BANKS, RAEParams
from apsq.hw.rae.template import render
from apsq.hw.rae.verilog import TOP_NAME, write_verilog

__all__ = ["testbench_text", "run_layers_icarus", "run_layers_icarus_stats", "check_icarus"]


def check_icarus() -> None:
    """Raise :class:`APSQError` unless ``iverilog`` and ``vvp`` are on ``PATH``."""
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            raise APSQError(f"{tool} is not installed (Debian: apt-get install iverilog); the icarus backend needs it")


def testbench_text(params: RAEParams, n_beats: int, n_passes: int, n_out: int, backpressure: bool,
                   seed: int = 1) -> str:
    """The Verilog testbench (``templates/icarus_tb.v``): prints ``OUT <hex>`` per output beat,
    ``CYCLES n`` and ``ACT`` (bank reads 0..3, writes 0..3, requantizations, closings); with ``backpressure`` the consumer holds ``o_ready`` low a pseudo-random quarter of
    the cycles (``$random`` seeded with ``seed``)."""
    pw = max(1, Shape.cast(range(NUM_BANKS * params.depth)).width)
    ready = "o_ready <= ($random(seed) & 3) != 0;" if backpressure else "o_ready <= 1'b1;"
    return render(
        "icarus_tb.v", PW1=pw - 1, IW1=params.in_layout().size - 1, OW1=params.out_layout().size - 1,
        TOP=TOP_NAME, BEATS1=max(1, n_beats) - 1, CFG1=3 * n_passes - 1, READY=ready, N_OUT=n_out,
        N_PASSES=n_passes, SEED=seed & 0x7FFFFFFF, TIMEOUT_NS=10 * (20 * max(1, n_beats) + 200),
    )


def run_layers_icarus(
    jobs: Sequence[LayerJob],
    params: RAEParams,
    *,
    backpressure: bool = False,
    workdir: Path | None = None,
    seed: int = 1,
) -> tuple[list[np.ndarray], int]:
    """Simulate ``jobs`` on the exported Verilog with Icarus; return (codes per layer, cycles).

    Raises :class:`APSQError` when ``iverilog``/``vvp`` are missing or the simulation fails.
    """
    codes, cycles, _, _ = _simulate(jobs, params, backpressure, workdir, seed)
    return codes, cycles


def _simulate(
    jobs: Sequence[LayerJob], params: RAEParams, backpressure: bool, workdir: Path | None, seed: int
) -> tuple[list[np.ndarray], int, list[EnginePass], Activity]:
    check_icarus()
    schedule = build_schedule(jobs, params)
    beats = [b for ps in schedule for b in ps.beats()]
    n_out = sum(ps.positions for ps in schedule)
    iw = params.in_layout().size
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        write_verilog(wd / "rae.v", params)
        (wd / "beats.hex").write_text("".join(f"{b:0{(iw + 3) // 4}x}\n" for b in beats))
        (wd / "cfg.hex").write_text(
            "".join(f"{ps.gs - 1:08x}\n{ps.positions - 1:08x}\n{len(ps.words):08x}\n" for ps in schedule)
        )
        (wd / "tb.v").write_text(testbench_text(params, len(beats), len(schedule), n_out, backpressure, seed))
        comp = subprocess.run(["iverilog", "-g2005", "-o", "sim.vvp", "tb.v", "rae.v"], cwd=wd,
                              capture_output=True, text=True, check=False)
        if comp.returncode != 0:
            raise APSQError(f"iverilog failed:\n{comp.stderr[-2000:]}")
        run = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=wd, capture_output=True, text=True, check=False)
    lines = run.stdout.splitlines()
    if run.returncode != 0 or any(line.startswith("TIMEOUT") for line in lines):
        raise APSQError(f"Icarus simulation failed or timed out:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    outputs = [unpack_out(params, int(line.split()[1], 16)) for line in lines if line.startswith("OUT ")]
    cycles = next(int(line.split()[1]) for line in lines if line.startswith("CYCLES "))
    a = next([int(x) for x in line.split()[1:]] for line in lines if line.startswith("ACT "))
    return scatter_outputs(schedule, outputs, jobs, params), cycles, schedule, Activity(a[0:4], a[4:8], a[8], a[9])


def run_layers_icarus_stats(
    jobs: Sequence[LayerJob], params: RAEParams, *, backpressure: float = 0.0, seed: int = 0
) -> tuple[list[np.ndarray], RunStats]:
    """:func:`run_layers_icarus` in the registry's shape: (codes per layer, :class:`RunStats` with
    ``cycles``, ``beats_in``, ``beats_out``, ``wall_s`` and the activity; the testbench does not
    classify stalls).
    ``cycles`` is one more than the other backends' (the testbench's synchronous producer offers the
    first beat one clock after reset, the others in the first cycle).
    ``backpressure > 0`` turns on the testbench's pseudo-random ``o_ready`` pattern (a quarter of the
    cycles, whatever the probability; ``$random`` seeded with ``seed + 1``)."""
    t0 = time.perf_counter()
    codes, cycles, schedule, activity = _simulate(jobs, params, backpressure > 0, None, seed + 1)
    wall = time.perf_counter() - t0
    return codes, RunStats(cycles=cycles, beats_in=sum(len(p.words) for p in schedule),
                           beats_out=sum(p.positions for p in schedule), wall_s=wall, activity=activity)
