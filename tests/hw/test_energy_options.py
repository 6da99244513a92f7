"""Issue 13 item 4 and issue 14 item 3: bank limit, tile from the config, RAE overhead, per-channel
exponents, per-operand registers, latency ports, and the CLI options that expose them."""

import json
import warnings

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from apsq.errors import APSQError
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.dataflow.common import BOUNDS
from apsq.hw.energy import compare, evaluate
from apsq.cli.energy import register
from apsq.hw.workloads import Layer, Workload
from apsq.nn.config import APSQConfig


def _wl(m=256, k=1024, n=256, count=1):
    return Workload("g", (Layer("g", "linear", m, k, n, count),))


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)

    @a.command("noop")
    def _noop() -> None:
        pass

    return a


def _run(app, *args):
    return CliRunner().invoke(app, ["energy", *args])


def test_gs_above_the_banks_warns_or_errors():
    with pytest.warns(UserWarning, match="exceeds the PSUM buffer's 4 banks"):
        evaluate(_wl(), "ws", "apsq", 5)
    with pytest.raises(APSQError, match=r"gs=9 for layer 'g' exceeds the PSUM buffer's 4 banks"):
        evaluate(_wl(), "ws", "apsq", 9, gs_above_banks="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(_wl(), "ws", "apsq", 4)  # at the limit: fine
        evaluate(_wl(), "ws", "none", 9)  # gs means nothing for the baseline


def test_tile_from_the_quantization_config():
    cfg = APSQConfig(tile=16)
    with pytest.raises(APSQError, match=r"PSUM tile 16 does not match .* pe_array.rows = 32"):
        evaluate(_wl(), "ws", "apsq", cfg, tile_mismatch="error")
    with pytest.warns(UserWarning, match="PSUM tile 16 differs from pe_array.rows = 32"):
        evaluate(_wl(), "ws", "apsq", cfg)  # the API's default warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate(_wl(), "ws", "apsq", cfg, override_tile=True, tile_mismatch="error")  # on purpose
        evaluate(_wl(), "ws", "apsq", APSQConfig(tile=32), tile_mismatch="error")
    assert r.total_pj == pytest.approx(evaluate(_wl(), "ws", "apsq", 2).total_pj)  # priced at the array's 32
    with pytest.raises(APSQError, match="tile"):
        evaluate(_wl(), "ws", "apsq", 2, tile=8, tile_mismatch="error")


def test_cli_refuses_a_config_tile_that_is_not_the_array(app, tmp_path):
    cfg = tmp_path / "apsq.yaml"
    cfg.write_text("tile: 16\ngs: 2\n")
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "--gs-config", str(cfg))
    assert r.exit_code == 2 and "PSUM tile 16 does not match" in " ".join(r.output.split())
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "--gs-config", str(cfg), "--override-tile", "--json")
    assert r.exit_code == 0, r.output


def test_rae_overhead_is_charged_per_stored_psum():
    c = compare(_wl(), "ws", 2)
    n = 1024 // 32
    stored = 256 * 256 * (n - 1)  # outputs x (n-1) writes, and as many reads
    rae = default_accelerator().rae
    assert c.apsq.rae_pj.sum() == pytest.approx(stored * (rae.requant_pj + rae.accumulate_pj))
    assert c.baseline.rae_pj.sum() == 0
    assert compare(_wl(), "os", 2).apsq.rae_pj.sum() == 0  # OS stores no PSUMs
    assert c.to_json()["breakdown"]["apsq"]["by_operand"]["rae"] == pytest.approx(c.apsq.rae_pj.sum())


def test_per_channel_exponents_cost_storage():
    t = evaluate(_wl(), "ws", "apsq", 2, psum_granularity="tensor")
    ch = evaluate(_wl(), "ws", "apsq", 2, psum_granularity="channel")
    acc = default_accelerator()
    n_k, e = 1024 // 32, acc.rae.exponent_bits
    # WS: n_k x N exponents fetched once from DRAM into the PSUM buffer, read once per weight-tile load
    fetched = n_k * 256 * e * (acc.dram.read_pj_per_bit + acc.buffers.psum.write_pj_per_bit)
    reads = n_k * 256 * e * acc.buffers.psum.read_pj_per_bit
    assert ch.exponent_pj.sum() == pytest.approx(fetched + reads)
    assert ch.total_pj - t.total_pj == pytest.approx(fetched + reads)
    assert evaluate(_wl(), "ws", "none", 2, psum_granularity="channel").exponent_pj.sum() == 0
    assert evaluate(_wl(k=32), "ws", "apsq", 2, psum_granularity="channel").exponent_pj.sum() == 0  # one step
    # from an APSQConfig, per layer (overrides applied)
    cfg = APSQConfig(psum_granularity="channel")
    assert evaluate(_wl(), "ws", "apsq", cfg).exponent_pj.sum() == pytest.approx(ch.exponent_pj.sum())
    cfg = APSQConfig(psum_granularity="channel", overrides={"g": {"psum_granularity": "tensor"}})
    assert evaluate(_wl(), "ws", "apsq", cfg).exponent_pj.sum() == 0
    with pytest.raises(APSQError, match="psum_granularity must be one of 'tensor', 'channel'"):
        evaluate(_wl(), "ws", "apsq", 2, psum_granularity="row")


def test_per_operand_register_energies():
    d = default_accelerator().model_dump()
    d["pe_array"]["acc_reg_pj_per_bit"] = 0.0
    zero_acc = Accelerator.from_dict(d)
    a, b = evaluate(_wl(), "ws", "none", 1, 8), evaluate(_wl(), "ws", "none", 1, 8, zero_acc)
    macs = 256 * 1024 * 256
    assert a.total_pj - b.total_pj == pytest.approx(2 * macs * 32 * default_accelerator().pe_array.reg_pj_per_bit)


def test_latency_is_the_max_of_compute_and_every_port():
    r = evaluate(_wl(), "ws", "none", 1, 8)
    assert r.counts.cycles[0] >= r.counts.compute_cycles[0]
    assert BOUNDS[int(r.counts.bound_by[0])] in BOUNDS
    # the default PSUM port carries the INT32 read-modify-writes: baseline and APSQ have the same latency
    # when nothing spills (issue 13: the 256-bit port made APSQ look 4x faster)
    c = compare(Workload("b", (Layer("b", "linear", 128, 768, 768),)), "ws", 2)
    assert c.baseline.latency_us == pytest.approx(c.apsq.latency_us)


def test_cli_baseline_bits_and_plot_layers(app, tmp_path):
    png = tmp_path / "layers.png"
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "-d", "ws", "--baseline-bits", "24", "--json",
             "--plot-layers", str(png))
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["baseline_bits"] == 24 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = out["layers"]["apsq"][0]
    assert {"total_pj", "psum_pj", "dram_pj", "rae_pj", "by_operand", "mapping", "bound_by"} <= set(row)
    assert set(out["schedules"]) == {"untiled", "tiled"} and out["schedules"]["tiled"]["os_pj"] > 0


def test_cli_schedules_and_errors(app):
    r = _run(app, "-m", "bert-base", "--seq-len", "64", "-d", "is", "--schedule", "tiled", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["schedule"] == "tiled" and out["reduction"] == pytest.approx(out["schedules"]["tiled"]["reduction"])
    r = _run(app, "-m", "bert-base", "--seq-len", "64", "-d", "is", "--schedule", "tiled", "--per-layer")
    assert r.exit_code == 0 and "under both schedules" in r.output and "M>N>K" in r.output
    for args, needle in (
        (["--gs", "9"], "exceeds the PSUM buffer's 4 banks"),
        (["--schedule", "best"], "--schedule must be one of"),
        (["--spill", "never"], "--spill must be one of"),
        (["--mode", "lsq"], "--mode must be one of"),
        (["-d", "rs"], "--dataflow must be one of"),
        (["--dram", "ddr9"], "dram preset must be one of"),
        (["--engine", "timeloop"], "--engine must be one of"),
        (["--baseline-bits", "0"], "'--baseline-bits'"),
        (["--accelerator", "tpu"], "does not exist"),
    ):
        r = _run(app, "-m", "bert-base", "--seq-len", "16", *args)
        assert r.exit_code == 2 and needle in " ".join(r.output.split()), (args, r.output)


def test_cli_accelerator_by_name_and_dram_preset(app):
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "-d", "ws", "--accelerator", "zigzag-tpu-like", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["accelerator"] == "zigzag-tpu-like"
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "-d", "ws", "--dram", "hbm2", "--json")
    assert json.loads(r.output)["accelerator"] == "apsq-28nm-int8+hbm2"


def test_sweep_plot_has_no_vertical_lines(monkeypatch, tmp_path):
    import matplotlib.axes

    from apsq.hw.energy_plots import plot_sweep
    from apsq.hw.energy_runs import run_sweep

    calls = []
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda *a, **k: calls.append(a))
    res = run_sweep("bert-base", "ws", (512, 2048), progress=False)
    plot_sweep(res, str(tmp_path / "s.png"))
    assert calls == [] and (tmp_path / "s.png").exists()


def test_os_reference_beside_both_schedules():
    w = Workload("b", (Layer("b", "linear", 512, 768, 3072),))
    for sched in ("untiled", "tiled"):
        r = evaluate(w, "os", "apsq", 2, schedule=sched)
        assert r.psum_pj == 0 and np.all(r.rae_pj == 0)


def test_zigzag_missing_is_a_clear_error(app, monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "zigzag.api", None)  # import zigzag.api -> ImportError
    p = tmp_path / "w.yaml"
    p.write_text("layers: [{name: a, m: 64, k: 128, n: 64}]\n")
    r = _run(app, "--workload", str(p), "-d", "ws", "--engine", "zigzag")
    assert r.exit_code == 2 and "pip install 'apsq[baselines]'" in " ".join(r.output.split())


def test_breakdown_plot_prices_what_the_table_prices(tmp_path):
    # `apsq energy --baseline-bits 24 --spill all-or-nothing --plot f.png` drew an INT32 baseline under the
    # fractional rule (the plot dropped every option), labelled "INT32", beside a table that said INT24
    from apsq.hw.energy_plots import plot_breakdown

    w = Workload("b", (Layer("q", "linear", 64, 768, 768), Layer("up", "linear", 64, 768, 3072)))
    opts = {"baseline_bits": 24, "spill": "all-or-nothing"}
    bars = plot_breakdown(w, "is", 6, None, str(tmp_path / "b.png"), **opts)
    assert bars[0][0] == "INT24\nbaseline"
    assert bars[0][1] == pytest.approx(compare(w, "is", 1, 6, **opts).baseline.total_pj)
    for g, (label, pj) in zip((1, 2, 3, 4), bars[1:]):
        assert label.endswith(f"gs={g}") and pj == pytest.approx(compare(w, "is", g, 6, **opts).apsq.total_pj)
    # a PSUM buffer of 2 banks cannot run gs 3 or 4: those bars are left out
    d = default_accelerator().model_dump()
    d["buffers"]["psum"]["banks"] = 2
    bars = plot_breakdown(w, "is", 8, Accelerator.from_dict(d), str(tmp_path / "c.png"))
    assert [b[0] for b in bars] == ["INT32\nbaseline", "APSQ\ngs=1", "APSQ\ngs=2"]
    # PSQ has no gs: one bar (it drew four equal ones labelled gs = 1..4)
    bars = plot_breakdown(w, "is", 8, None, str(tmp_path / "d.png"), mode="psq")
    assert [b[0] for b in bars] == ["INT32\nbaseline", "PSQ"]


@pytest.mark.parametrize(("args", "needle"), [({"psum_bits": 20}, "psum_bits = 20"),
                                              ({"baseline_bits": 24}, "baseline_bits = 24"),
                                              ({"baseline_bits": (16, 24)}, "baseline_bits[1] = 24")])
def test_stored_psums_no_wider_than_the_accumulator(args, needle):
    # `apsq energy --accelerator acc16.yaml --psum-bits 20` priced 20-bit codes of a 16-bit accumulator
    # (a -1.9 % "saving") without a word; now refused naming the option, the accelerator and the range
    d = default_accelerator().model_dump()
    d["acc_bits"], d["name"] = 16, "acc16"
    acc = Accelerator.from_dict(d)
    w = Workload("b", (Layer("a", "linear", 64, 256, 64), Layer("b", "linear", 64, 256, 64)))
    with pytest.raises(APSQError, match=r"wider than the accumulator of accelerator 'acc16' \(acc_bits = 16\)") as e:
        compare(w, "ws", 2, accelerator=acc, **args)
    assert needle in str(e.value) and "1..16" in str(e.value)
    assert compare(w, "ws", 2, 16, acc, baseline_bits=16).reduction == pytest.approx(compare(w, "ws", 2, 16, acc).reduction)


def test_cli_refuses_a_baseline_wider_than_the_accumulator(app):
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "-d", "ws", "--baseline-bits", "40")
    assert r.exit_code != 0 and "acc_bits = 32" in r.output and "--baseline-bits" in r.output


@pytest.mark.parametrize("mode", ["apsq", "psq"])
def test_a_baseline_narrower_than_the_stored_psums_is_refused(app, mode):
    """``--baseline-bits 4 --psum-bits 8`` printed a negative saving; now an error naming both options,
    before anything is priced. Equal widths stay allowed (the saving is then the RAE's cost)."""
    w = Workload("b", (Layer("a", "linear", 64, 256, 64),))
    with pytest.raises(APSQError, match=r"baseline_bits = 4 is narrower than the .* \(psum_bits = 8\)") as e:
        compare(w, "ws", 1, 8, mode=mode, baseline_bits=4)
    assert "8..32" in str(e.value) and "--psum-bits" in str(e.value)
    compare(w, "ws", 1, 8, mode=mode, baseline_bits=8)
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "-d", "ws", "--baseline-bits", "6", "--psum-bits", "8")
    assert r.exit_code != 0 and "narrower" in r.output and "--baseline-bits" in r.output


def test_sweep_prices_only_the_gs_the_psum_banks_allow(app, tmp_path):
    # `apsq energy sweep --accelerator two_banks.yaml` priced gs = 3 and 4 (two warnings, columns the
    # machine cannot run) where `apsq energy` refuses them; now the columns stop at the banks
    from apsq.hw.energy_runs import run_sweep

    d = default_accelerator().model_dump()
    d["buffers"]["psum"]["banks"] = 2
    acc = Accelerator.from_dict(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = run_sweep("bert-base", "ws", (16, 32), acc=acc, progress=False)
    assert list(res["first_spill"]) == ["baseline", "gs=1", "gs=2"]
    assert {r["config"] for r in res["rows"]} == {"baseline", "gs=1", "gs=2"}
    f = tmp_path / "two.yaml"
    import yaml

    f.write_text(yaml.safe_dump(d))
    png = tmp_path / "s.png"
    r = _run(app, "sweep", "-m", "bert-base", "--values", "16,32", "--accelerator", str(f), "--plot", str(png))
    assert r.exit_code == 0, r.output
    assert "gs=2" in r.output and "gs=3" not in r.output and png.is_file()
