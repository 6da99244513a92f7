"""CLI end to end on the digits CNN (small): tune-gs, beyond low-bit, beyond a2q, beyond baseline."""

from __future__ import annotations

import json

import pytest
import yaml

from apsq.beyond.lowbit import lowbit_variants, variant_energy
from apsq.eval.setup import workload_of
from apsq.cli import app
from apsq.hw.energy import evaluate
from apsq.nn.config import APSQConfig
from apsq.errors import APSQError
from apsq.train.config import APSQSection, parse_config

def test_tune_gs_cli(setup_files, runner, digits_cfg):
    d = setup_files
    r = runner.invoke(app, ["tune-gs", "-c", str(d / "cfg.yaml"), "--fp32", str(d / "fp32.safetensors"),
                            "--gs", "1,2,4", "--psum-kib", "1", "--eval-limit", "0", "--max-points", "4", "--override-tile",
                            "--json", str(d / "t.json"), "--out-yaml", str(d / "t.yaml"),
                            "--train-yaml", str(d / "train.yaml"), "--png", str(d / "t.png")])
    assert r.exit_code == 0, r.output
    res = json.loads((d / "t.json").read_text())
    assert res["layers"] == ["features.3", "features.7"]  # K = 144, 288: more than one 16-row tile
    assert res["evaluations"] >= 3 and (d / "t.png").stat().st_size > 1000
    cfg = APSQConfig.from_yaml(d / "t.yaml")
    chosen = res["chosen"]
    assert {n: cfg.for_module(n).gs for n in res["layers"]} == chosen["gs"]
    assert chosen["energy_uj"] <= res["budget_uj"] * (1 + 1e-9)
    # the written config reproduces the chosen energy in the energy model (the --gs-config path)
    from apsq.cli.tune import _accelerator

    wl = workload_of(parse_config(digits_cfg))
    e = evaluate(wl, "is", "apsq", cfg, 8, _accelerator(None, 1), override_tile=True).total_pj / 1e6
    assert e == pytest.approx(chosen["energy_uj"], rel=1e-9)
    # the training config carries it too
    assert parse_config(yaml.safe_load((d / "train.yaml").read_text())).apsq_config() == cfg
    # uniform energies rise with gs once the 1 KiB PSUM buffer spills
    ue = [p["energy_uj"] for p in res["uniform"]]
    assert ue == sorted(ue) and ue[0] < ue[-1]


def test_tune_gs_cli_errors(setup_files, runner, digits_cfg):
    d = setup_files
    r = runner.invoke(app, ["tune-gs", "-c", str(d / "cfg.yaml"), "--fp32", str(d / "nope.safetensors")])
    assert r.exit_code == 2 and "fp32" in r.output
    r = runner.invoke(app, ["tune-gs", "-c", str(d / "cfg.yaml"), "--fp32", str(d / "fp32.safetensors"),
                            "--gs", "1,x"])
    assert r.exit_code == 2 and "--gs" in r.output
    # one tile: the config trains 16-deep tiles, the default array is 32 rows deep -> refused up front
    r = runner.invoke(app, ["tune-gs", "-c", str(d / "cfg.yaml"), "--fp32", str(d / "fp32.safetensors"),
                            "--gs", "1,2", "--json", str(d / "refused.json")])
    assert r.exit_code == 2 and "tile 16" in r.output and "pe_array.rows = 32" in r.output, r.output
    assert not (d / "refused.json").exists()


def test_lowbit_variants_and_energy(runner, digits_cfg):
    v = lowbit_variants(APSQSection.model_validate({"tile": 16, "gs": 3, "exclude": ["classifier"]}), gs=2)
    assert set(v) == {"w8a8_none", "w8a8_apsq8", "w4a4_none", "w4a4_apsq8", "w4a4_apsq6", "w4a4_apsq4",
                      "w4a8_none", "w4a8_apsq8", "w4a8_apsq6", "w4a8_apsq4"}
    for cfg in v.values():  # the base's tile and exclusions kept, the rest given by the variant
        assert cfg.tile == 16 and cfg.exclude == ("classifier",) and {"mode", "tile", "exclude"} <= cfg.model_fields_set
    assert v["w4a8_apsq6"].model_dump() == {"tile": 16, "mode": "apsq", "gs": 2, "psum_bits": 6, "weight_bits": 4,
                                            "act_bits": 8, "exclude": ["classifier"]}
    assert v["w8a8_none"].model_dump() == {"tile": 16, "mode": "none", "exclude": ["classifier"]}
    with pytest.raises(APSQError, match=r"apsq: gs must be in \[1, 65536\], got 0"):
        lowbit_variants(v["w8a8_none"], gs=0)
    wl = workload_of(parse_config(digits_cfg))
    with pytest.warns(UserWarning, match="PSUM tile 16 differs from pe_array.rows = 32"):
        variant_energy(wl, "is", v["w4a4_apsq8"])
    e8 = variant_energy(wl, "is", v["w4a4_apsq8"], override_tile=True)
    e4 = variant_energy(wl, "is", v["w4a4_apsq4"], override_tile=True)
    ref = variant_energy(wl, "is", v["w8a8_none"], override_tile=True)
    assert e4["psum_uj"] == pytest.approx(e8["psum_uj"] / 2)  # stored PSUM energy is linear in its width
    assert e8["total_uj"] < ref["total_uj"]


def test_lowbit_cli_merges(setup_files, runner, digits_cfg):
    d = setup_files
    out = d / "lb.json"
    for key in ("a", "b"):
        r = runner.invoke(app, ["beyond", "low-bit", "-c", str(d / "cfg.yaml"), "--fp32", str(d / "fp32.safetensors"),
                                "--only", "w8a8_none,w4a4_apsq4", "--eval-limit", "0", "--json", str(out),
                                "--key", key, "--override-tile"])
        assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert set(res) == {"a", "b"} and res["a"]["variants"] == res["b"]["variants"]
    assert set(res["a"]["variants"]) == {"w8a8_none", "w4a4_apsq4"}
    r = runner.invoke(app, ["beyond", "low-bit", "-c", str(d / "cfg.yaml"), "--fp32", str(d / "fp32.safetensors"),
                            "--only", "w3a3", "--override-tile"])
    assert r.exit_code == 2 and "unknown variants" in r.output
    # the digits config trains 16-deep tiles; the default array is 32 rows deep: refused before any run
    r = runner.invoke(app, ["beyond", "low-bit", "-c", str(d / "cfg.yaml"), "--fp32", str(d / "fp32.safetensors"),
                            "--only", "w8a8_none", "--json", str(d / "refused.json")])
    assert r.exit_code == 2 and "pe_array.rows = 32" in r.output and not (d / "refused.json").exists()


def test_baseline_cli(tmp_path, runner, digits_cfg):
    out = tmp_path / "b.json"
    r = runner.invoke(app, ["beyond", "baseline", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert len(res["energy"]) == 8  # four built-in workloads x IS, WS
    for row in res["energy"]:
        b = row["baseline"]
        assert b["16"]["total_uj"] <= b["exact"]["total_uj"] <= b["32"]["total_uj"]
