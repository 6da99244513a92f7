"""Optional cross-check of one WS GEMM against ZigZag (zigzag-dse 3.9.1), an independent analytical model.

Same 32x32 array, same loop order (spatial: K-out over D1, C (reduction) over D2; temporal, innermost
first: B, C, K), a per-PE 8-bit weight register, a per-PE **32-bit** output register (the stock
tpu_like.yaml has a 16-bit one that cannot hold an INT32 PSUM), one SRAM for inputs and PSUMs, DRAM.
All SRAM ports are 32 bits wide so ZigZag's word counts convert to bits exactly.
Findings (docs/energy-model.md, "Cross-check"): input, weight and output traffic agree exactly; ZigZag
charges n PSUM reads and n PSUM writes per output at PSUM width where we count n-1 of each. Its element
counts are n-1 reads (no read of a zero sum) and n writes (the final sum is written at PSUM width before
it leaves at 8 bits, where we send it to the output path); the n-th read is in its word-access count
only, which is what it prices (checked below). Both scale the PSUM traffic exactly by beta (32 -> 8: /4).
"""

import importlib
import logging
import os

import pytest

from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.dataflow import LEVELS, OPERANDS, access_counts
from apsq.hw.workloads import Layer, Workload


def require_extra(module: str, extra: str = "baselines"):
    """Import ``module`` of an optional extra: skip where it is absent, but FAIL in CI (``CI=true``), which
    installs the extra — a broken import there must not turn the live check into a silent skip (issue 25)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"{module} (extra '{extra}') cannot be imported: {type(exc).__name__}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI installs apsq[{extra}], yet {msg}", pytrace=False)
        pytest.skip(msg, allow_module_level=True)


zigzag_api = require_extra("zigzag.api")
yaml = require_extra("yaml")

pytestmark = pytest.mark.optional

M, K, N = 128, 256, 64
PORT = "bandwidth_min: 32, bandwidth_max: 32"
HW = f"""
name: apsq_ws_check
memories:
  rf_w:
    {{size: 8, r_cost: 0, w_cost: 0, area: 0, latency: 1, auto_cost_extraction: False, operands: [I2],
      served_dimensions: [],
      ports: [{{name: r_port_1, type: read, bandwidth_min: 8, bandwidth_max: 8, allocation: ["I2, tl"]}},
              {{name: w_port_1, type: write, bandwidth_min: 8, bandwidth_max: 8, allocation: ["I2, fh"]}}]}}
  rf_o:
    {{size: 32, r_cost: 0, w_cost: 0, area: 0, latency: 1, auto_cost_extraction: False, operands: [O],
      served_dimensions: [],
      ports: [{{name: r_port_1, type: read, bandwidth_min: 32, bandwidth_max: 32, allocation: ["O, tl"]}},
              {{name: r_port_2, type: read, bandwidth_min: 32, bandwidth_max: 32, allocation: ["O, th"]}},
              {{name: w_port_1, type: write, bandwidth_min: 32, bandwidth_max: 32, allocation: ["O, fh"]}},
              {{name: w_port_2, type: write, bandwidth_min: 32, bandwidth_max: 32, allocation: ["O, fl"]}}]}}
  sram:
    {{size: 8388608, r_cost: 1, w_cost: 1, area: 0, latency: 1, auto_cost_extraction: False, operands: [I1, O],
      served_dimensions: [D1, D2],
      ports: [{{name: r_port_1, type: read, {PORT}, allocation: ["I1, tl", "O, tl", "O, th"]}},
              {{name: w_port_1, type: write, {PORT}, allocation: ["I1, fh", "O, fh", "O, fl"]}}]}}
  dram:
    {{size: 10000000000, r_cost: 100, w_cost: 100, area: 0, latency: 1, auto_cost_extraction: False,
      operands: [I1, I2, O], served_dimensions: [D1, D2],
      ports: [{{name: rw_port_1, type: read_write, {PORT},
               allocation: ["I1, fh", "I1, tl", "I2, fh", "I2, tl", "O, fh", "O, tl", "O, fl", "O, th"]}}]}}
operational_array: {{unit_energy: 0, unit_area: 1, dimensions: [D1, D2], sizes: [32, 32]}}
"""


def _zigzag(tmp_path, psum_bits: int) -> dict:
    hw = tmp_path / "hw.yaml"
    hw.write_text(HW)
    mp = tmp_path / "map.yaml"
    mp.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "default",
                    "spatial_mapping": {"D1": ["K, 32"], "D2": ["C, 32"]},
                    "temporal_ordering": [["B", M], ["C", K // 32], ["K", N // 32]],
                    "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"},
                }
            ]
        )
    )
    wl = [
        {
            "id": 0,
            "name": "gemm",
            "operator_type": "Gemm",
            "equation": "O[b][k]+=I[b][c]*W[k][c]",
            "loop_dims": ["B", "K", "C"],
            "loop_sizes": [M, N, K],
            "operand_precision": {"I": 8, "W": 8, "O": psum_bits, "O_final": 8},
            "operand_source": {"I": 0, "W": 0},
        }
    ]
    logging.disable(logging.CRITICAL)
    try:
        _, _, cmes = zigzag_api.get_hardware_performance_zigzag(
            wl,
            str(hw),
            str(mp),
            opt="energy",
            dump_folder=str(tmp_path / f"out{psum_bits}"),
            loma_show_progress_bar=False,
        )
    finally:
        logging.disable(logging.NOTSET)
    cme = cmes[0][0]
    acc = {str(op): [lv.__jsonrepr__() for lv in lvs] for op, lvs in cme.memory_word_access.items()}
    layer_cme = cmes[0][1][0][0]  # the layer's own evaluation: element counts before word rounding
    (o_moves,) = [mv for op, mv in layer_cme.mapping_int.unit_mem_data_movement.items() if str(op) == "O"]
    elems = o_moves[1].get_attribute("data_elem_move_count").__jsonrepr__()  # the SRAM level
    # levels per operand: O: rf_o, sram, dram; I: sram, dram; W: rf_w, dram. 32-bit words except rf_w (8).
    return {
        "psum_sram_bits": 32 * (acc["O"][1]["rd_out_to_low"] + acc["O"][1]["wr_in_by_low"]),
        "psum_sram_word_read_bits": 32 * acc["O"][1]["rd_out_to_low"],
        "psum_sram_word_write_bits": 32 * acc["O"][1]["wr_in_by_low"],
        "psum_sram_elem_reads": elems["rd_out_to_low"],
        "psum_sram_elem_writes": elems["wr_in_by_low"],
        "in_sram_read_bits": 32 * acc["I"][0]["rd_out_to_low"],
        "in_dram_read_bits": 32 * acc["I"][1]["rd_out_to_low"],
        "w_dram_read_bits": 32 * acc["W"][1]["rd_out_to_low"],
        "w_reg_write_bits": 8 * acc["W"][0]["wr_in_by_high"],
        "out_dram_write_bits": 32 * acc["O"][2]["wr_in_by_low"],
    }


def _ours(psum_bits: int) -> dict:
    d = default_accelerator().model_dump()
    for b in d["buffers"].values():
        b["capacity_kib"] = 1024  # ZigZag's SRAM is 1 MiB and shared; nothing spills in either model
    acc = Accelerator.from_dict(d)
    w = Workload("gemm", (Layer("gemm", "linear", M, K, N),))
    mode = "none" if psum_bits == 32 else "apsq"
    c = access_counts(w, acc, "ws", mode, 1, psum_bits)
    b = c.bits[0]
    i, wt, ps, out = (OPERANDS.index(x) for x in ("input", "weight", "psum", "output"))
    reg, sram, dram = (LEVELS.index(x) for x in ("reg", "sram", "dram"))
    return {
        "psum_sram_bits": (c.reads[0, ps, sram] + c.writes[0, ps, sram]) * b[ps, sram],
        "in_sram_read_bits": c.reads[0, i, sram] * b[i, sram],
        "in_dram_read_bits": c.reads[0, i, dram] * b[i, dram],
        "w_dram_read_bits": c.reads[0, wt, dram] * b[wt, dram],
        "w_reg_write_bits": c.writes[0, wt, reg] * b[wt, reg],
        "out_dram_write_bits": c.writes[0, out, dram] * b[out, dram],
    }


def test_ws_gemm_matches_zigzag(tmp_path):
    n = K // 32
    zz = {bits: _zigzag(tmp_path, bits) for bits in (32, 8)}
    for bits in (32, 8):
        z, o = zz[bits], _ours(bits)
        for key in (
            "in_sram_read_bits",
            "in_dram_read_bits",
            "w_dram_read_bits",
            "w_reg_write_bits",
            "out_dram_write_bits",
        ):
            assert z[key] == o[key], (bits, key, z[key], o[key])
        # ZigZag: n reads + n writes per output at PSUM width; ours: n-1 of each
        assert z["psum_sram_bits"] == pytest.approx(o["psum_sram_bits"] * n / (n - 1)), bits
        # ... of which the elements moved are n-1 reads (no zero sum is read) and n writes; the n-th read
        # is in the word-access count alone (docs/energy-model.md §4 said "reads a zero sum first")
        assert (z["psum_sram_elem_reads"], z["psum_sram_elem_writes"]) == ((n - 1) * M * N, n * M * N), bits
        assert z["psum_sram_word_read_bits"] == z["psum_sram_word_write_bits"] == n * M * N * bits
    assert zz[32]["psum_sram_bits"] == 4 * zz[8]["psum_sram_bits"]  # beta: 32 -> 8 bits


def test_engine_on_two_small_layers():
    """``apsq energy --engine zigzag``'s converter and runner on two small layers, IS and WS.

    ZigZag's reduction is within 1.5 pp of apsq's under ``spill="zigzag"`` (same counts but for ZigZag's 4
    accumulator-register accesses per MAC) and within ±5 pp of apsq's own fractional rule; golden values
    from results/energy_zigzag/agreement.json.
    """
    from apsq.hw.accelerator import load_accelerator
    from apsq.hw.energy import compare
    from apsq.hw.engine_zigzag import evaluate_zigzag

    machines = {"ws": load_accelerator("zigzag-tpu-like"), "is": load_accelerator("zigzag-tpu-like-is")}
    w = Workload("two", (Layer("qk", "matmul", 128, 64, 128, 12, False), Layer("q", "linear", 128, 768, 768)))
    gold = {"ws": (0.08272907650792338, 0.18511289870673375), "is": (0.08272907650792338, 0.18413051391124746)}
    for df in ("ws", "is"):
        tpu = machines[df]
        z = evaluate_zigzag(w, df, 8, tpu)
        assert z.layer_reduction.tolist() == pytest.approx(gold[df], rel=1e-6)
        ours = compare(w, df, 1, 8, tpu, spill="zigzag")
        assert ours.layer_reduction.tolist() == pytest.approx(z.layer_reduction.tolist(), abs=0.015)
        assert ours.reduction == pytest.approx(z.reduction, abs=0.015)
        frac = compare(w, df, 1, 8, tpu)
        assert max(abs(frac.layer_reduction - z.layer_reduction)) <= 0.05
        j = z.to_json()
        assert j["engine"] == "zigzag" and [ly["name"] for ly in j["layers"]] == ["qk", "q"]


def _energy_app():
    """``apsq energy`` alone on a Typer app (a second command keeps ``energy`` a subcommand)."""
    import typer

    from apsq.cli.energy import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:
        pass

    return app


def test_cli_engine_zigzag(tmp_path):
    """``apsq energy --engine zigzag --workload FILE``: ZigZag's and apsq's reductions side by side."""
    import json

    from typer.testing import CliRunner

    app = _energy_app()
    p = tmp_path / "w.yaml"
    p.write_text("layers:\n  - {name: qk, m: 128, k: 64, n: 128, count: 12, kind: matmul, w_is_weight: false}\n")
    r = CliRunner().invoke(app, ["energy", "--workload", str(p), "-d", "ws", "--engine", "zigzag",
                                 "--accelerator", "zigzag-tpu-like", "--spill", "zigzag", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["engine"] == "zigzag" and out["accelerator"] == "zigzag-tpu-like"
    assert out["reduction"] == pytest.approx(0.08272907650792338, rel=1e-6)
    assert abs(out["difference_pp"]) < 1.5 and out["layers"][0]["name"] == "qk"
    r = CliRunner().invoke(app, ["energy", "--workload", str(p), "-d", "os", "--engine", "zigzag"])
    assert r.exit_code == 2 and "use --dataflow is or ws" in " ".join(r.output.split())


def test_engine_runs_on_the_default_accelerator():
    """An accelerator that gives one shared register energy (no per-operand ones) converts too."""
    from apsq.hw.accelerator import load_accelerator
    from apsq.hw.engine_zigzag import evaluate_zigzag, to_zigzag_hardware

    acc = load_accelerator(None)
    hw = to_zigzag_hardware(acc, "ws")
    assert hw["memories"]["rf_i2"]["r_cost"] == pytest.approx(acc.pe_array.reg_pj("weight") * acc.weight_bits)
    w = Workload("one", (Layer("q", "linear", 64, 128, 64),))
    z = evaluate_zigzag(w, "ws", 8, acc)
    assert 0 < z.reduction < 1


def test_is_on_the_ws_machine_warns_and_both_engines_see_the_same_machine():
    """IS on tpu_like (no weight SRAM) is flagged by both engines; ZigZag links the operands by dataflow."""
    from apsq.hw.accelerator import load_accelerator
    from apsq.hw.energy import compare
    from apsq.hw.engine_zigzag import evaluate_zigzag

    tpu = load_accelerator("zigzag-tpu-like")
    w = Workload("q", (Layer("q", "linear", 128, 768, 768),))
    with pytest.warns(UserWarning, match="no weight buffer"):
        z = evaluate_zigzag(w, "is", 8, tpu)
    with pytest.warns(UserWarning, match="no weight buffer"):
        ours = compare(w, "is", 1, 8, tpu, spill="zigzag")
    assert z.reduction == pytest.approx(0.07733609700583499, rel=1e-6)
    assert ours.reduction == pytest.approx(z.reduction, abs=0.005)


def test_missing_dependency_reports_the_real_import_error(monkeypatch):
    """Installed zigzag-dse whose own import fails (``six``): the real error, not "needs the package"."""
    import builtins

    from apsq.errors import APSQError
    from apsq.hw.engine_zigzag import require_zigzag

    real_import = builtins.__import__

    def fake(name, *args, **kwargs):  # zigzag-dse's parser imports six, which is not installed
        if name == "zigzag.api":
            raise ModuleNotFoundError("No module named 'six'", name="six")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(APSQError, match=r"installed but importing it failed.*'six'.*pip install six"):
        require_zigzag()

    def absent(name, *args, **kwargs):
        if name == "zigzag.api":
            raise ModuleNotFoundError("No module named 'zigzag'", name="zigzag")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", absent)
    with pytest.raises(APSQError, match=r"needs the optional package zigzag-dse"):
        require_zigzag()


def test_ci_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI installs apsq\\[baselines\\]"):
        require_extra("apsq_no_such_module_xyz")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_extra("apsq_no_such_module_xyz")


def test_zigzag_report_validates_first_and_shows_progress(monkeypatch):
    # `apsq energy --engine zigzag --psum-bits 20` on a 16-bit accumulator ran ZigZag over every layer shape
    # (18 s on Segformer-B0) before the point was refused, and the run printed nothing while it worked
    import io

    from rich.console import Console

    import apsq.hw.engine_zigzag as ez
    from apsq.errors import APSQError
    from apsq.hw.energy_runs import zigzag_report

    w = Workload("t", (Layer("a", "linear", 16, 64, 32), Layer("b", "linear", 16, 64, 32), Layer("c", "linear", 8, 96, 32)))
    d = default_accelerator().model_dump()
    d["acc_bits"] = 16
    calls = []
    real = ez.zigzag_layer
    monkeypatch.setattr(ez, "zigzag_layer", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    with pytest.raises(APSQError, match="psum_bits = 20 is wider than the accumulator"):
        zigzag_report(w, "ws", 20, Accelerator.from_dict(d), None, "zigzag")
    assert calls == []  # refused before ZigZag ran
    buf = io.StringIO()
    res = zigzag_report(w, "ws", 8, default_accelerator(), None, "zigzag", progress=True,
                        console=Console(file=buf, force_terminal=False, width=100))
    assert calls == ["a", "a", "c", "c"]  # one run per distinct shape (baseline and quantized), in order
    assert "zigzag t (2 layer shapes)" in buf.getvalue()
    assert [r["name"] for r in res["layers"]] == ["a", "b", "c"]
    assert res["layers"][0]["reduction"] == res["layers"][1]["reduction"]


TEMPORAL_Q = 0.12758238454598225  # zigzag-dse 3.9.1, LOMA at lpf_limit 6 (its default); fixed order: 0.0235


def test_cli_engine_zigzag_searched_mapping(tmp_path):
    """``--zigzag-mapping temporal``: ZigZag searches the loop order (LOMA) and is compared with this model's
    mapper (tiled); a name outside MAPPINGS, or the option without ``--engine zigzag``, is refused."""
    import json

    from typer.testing import CliRunner

    app = _energy_app()
    p = tmp_path / "w.yaml"
    p.write_text("layers:\n  - {name: q, m: 128, k: 768, n: 768}\n")  # BERT-Base's query at 128 tokens
    base = ["energy", "--workload", str(p), "-d", "ws", "--accelerator", "default"]
    r = CliRunner().invoke(app, [*base, "--engine", "zigzag", "--zigzag-mapping", "temporal", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["zigzag_mapping"] == "temporal" and out["apsq_model"]["schedule"] == "tiled"
    assert out["reduction"] == pytest.approx(TEMPORAL_Q, rel=1e-6)
    # our mapper: 13.6 % with the grouped order (ZigZag's searched 12.8 %); 4.4 % before it had that order
    assert out["apsq_model"]["reduction"] == pytest.approx(0.1359, abs=1e-3)
    r = CliRunner().invoke(app, [*base, "--engine", "zigzag", "--json"])
    assert json.loads(r.output)["reduction"] == pytest.approx(0.02346564266078488, rel=1e-6)  # the fixed order
    r = CliRunner().invoke(app, [*base, "--engine", "zigzag", "--zigzag-mapping", "temporal", "--schedule", "tiled",
                                 "--json"])  # our side is tiled under a searched mapping: accepted
    assert r.exit_code == 0 and json.loads(r.output)["reduction"] == pytest.approx(TEMPORAL_Q, rel=1e-6)
    r = CliRunner().invoke(app, [*base, "--engine", "zigzag", "--schedule", "tiled"])  # fixed mapping: refused
    assert r.exit_code == 2 and "--schedule tiled would be ignored" in " ".join(r.output.split())
    r = CliRunner().invoke(app, [*base, "--engine", "zigzag", "--zigzag-mapping", "loma"])
    assert r.exit_code == 2 and "--zigzag-mapping" in r.output and "temporal" in r.output
    r = CliRunner().invoke(app, [*base, "--zigzag-mapping", "search"])
    assert r.exit_code == 2 and "--engine zigzag only" in " ".join(r.output.split())


def test_accumulator_register_holds_one_psum_whatever_its_width():
    """ZigZag sizes a memory in bits: a 32-bit accumulator at ``O`` = 8 bits held four partial sums, and a
    searched mapping kept four outputs per PE in it (BERT-Base FFN on apsq-28nm-int8: INT8 0.927 G pJ,
    0.981 with one PSUM). Capacity is now one ``O`` word; each access still costs one ``acc_bits`` word."""
    from apsq.errors import APSQError
    from apsq.hw.accelerator import load_accelerator
    from apsq.hw.engine_zigzag import to_zigzag_hardware

    acc = load_accelerator("default")
    for o_bits in (None, 8, 16, 32):
        reg = to_zigzag_hardware(acc, "ws", o_bits)["memories"]["rf_o"]
        assert reg["size"] == (o_bits or acc.acc_bits)
        assert all(p["bandwidth_min"] == p["bandwidth_max"] == acc.acc_bits for p in reg["ports"])
    with pytest.raises(APSQError, match="o_bits"):
        to_zigzag_hardware(acc, "ws", 40)
