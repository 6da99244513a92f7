"""Run the *exported Verilog* of the RAE in Icarus Verilog (a second, independent simulator).

:func:`run_layers_icarus` feeds the same packed beats as :func:`apsq.hw.rae.sim.run_layers` to
``rae.v`` through a small generated Verilog testbench (stimulus via ``$readmemh``, a synchronous
producer/consumer, optional pseudo-random ``o__ready`` back-pressure) and parses the output codes.
This checks the Verilog that a tool flow would consume, not only the Amaranth model.

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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from amaranth.hdl import Shape

from apsq.errors import APSQError
from apsq.hw.rae.engine import NUM_BANKS, RAEParams
from apsq.hw.rae.sim import LayerJob, unpack_out, build_schedule, scatter_outputs
from apsq.hw.rae.verilog import TOP_NAME, write_verilog

__all__ = ["testbench_text", "run_layers_icarus", "check_icarus"]


def check_icarus() -> None:
    """Raise :class:`APSQError` unless ``iverilog`` and ``vvp`` are on ``PATH``."""
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            raise APSQError(f"{tool} is not installed (Debian: apt-get install iverilog); --icarus needs it")


def testbench_text(params: RAEParams, n_beats: int, n_passes: int, n_out: int, backpressure: bool) -> str:
    """A Verilog testbench: prints ``OUT <hex>`` per output beat and ``CYCLES n``."""
    iw = params.in_layout().size
    ow = params.out_layout().size
    pw = max(1, Shape.cast(range(NUM_BANKS * params.depth)).width)
    ready = "o_ready <= ($random(seed) & 3) != 0;" if backpressure else "o_ready <= 1'b1;"
    return f"""`timescale 1ns/1ps
module tb;
  reg clk = 1'b0;
  reg rst = 1'b1;
  always #5 clk = ~clk;
  reg s0 = 1'b0, s1 = 1'b0;
  reg [{pw - 1}:0] last_pos = 0;
  reg i_valid = 1'b0;
  reg [{iw - 1}:0] i_payload = 0;
  wire i_ready, o_valid, busy;
  reg o_ready = 1'b0;
  wire [{ow - 1}:0] o_payload;
  {TOP_NAME} dut (.clk(clk), .rst(rst), .s0(s0), .s1(s1), .last_pos(last_pos),
    .i__valid(i_valid), .i__ready(i_ready), .i__payload(i_payload),
    .o__valid(o_valid), .o__ready(o_ready), .o__payload(o_payload), .busy(busy));
  reg [{iw - 1}:0] beats [0:{max(1, n_beats) - 1}];
  reg [31:0] cfg [0:{3 * n_passes - 1}];  // per pass: gs-1, M-1, beats
  integer seed = 1, k = 0, k_end = 0, pass = 0, outs = 0, expected = 0, cycles = 0, sending = 0;
  initial begin
    $readmemh("beats.hex", beats);
    $readmemh("cfg.hex", cfg);
    repeat (2) @(posedge clk);
    @(negedge clk) rst = 1'b0;
  end
  always @(posedge clk) if (!rst) begin
    cycles <= cycles + 1;
    {ready}
    if (o_valid && o_ready) begin
      $display("OUT %h", o_payload);
      outs <= outs + 1;
      if (outs + 1 == {n_out}) begin
        $display("CYCLES %0d", cycles + 1);
        $finish;
      end
    end
    if (!sending) begin
      if (pass < {n_passes} && !busy && !i_valid && outs == expected) begin
        s0 <= cfg[3 * pass][0];
        s1 <= cfg[3 * pass][1];
        last_pos <= cfg[3 * pass + 1];
        k_end <= k + cfg[3 * pass + 2];
        i_payload <= beats[k];
        i_valid <= 1'b1;
        sending <= 1;
      end
    end else if (i_valid && i_ready) begin
      k <= k + 1;
      if (k + 1 == k_end) begin
        i_valid <= 1'b0;
        sending <= 0;
        expected <= expected + cfg[3 * pass + 1] + 1;
        pass <= pass + 1;
      end else begin
        i_payload <= beats[k + 1];
      end
    end
  end
  initial begin
    #{10 * (20 * max(1, n_beats) + 200)};
    $display("TIMEOUT");
    $finish;
  end
endmodule
"""


def run_layers_icarus(
    jobs: Sequence[LayerJob],
    params: RAEParams,
    *,
    backpressure: bool = False,
    workdir: Path | None = None,
) -> tuple[list[np.ndarray], int]:
    """Simulate ``jobs`` on the exported Verilog with Icarus; return (codes per layer, cycles).

    Raises :class:`APSQError` when ``iverilog``/``vvp`` are missing or the simulation fails.
    """
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
        (wd / "tb.v").write_text(testbench_text(params, len(beats), len(schedule), n_out, backpressure))
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
    return scatter_outputs(schedule, outputs, jobs, params), cycles
