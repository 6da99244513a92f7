"""The gs sweep: variants, result format, reuse of finished runs, plot."""

from __future__ import annotations

import json

import pytest

from apsq.errors import APSQError
from apsq.eval.report import accuracy_table
from apsq.eval.sweep import sweep, sweep_variants
from apsq.train.config import parse_config


def test_variants_differ_only_in_mode_and_gs(standin, make_config):
    base = parse_config(make_config(standin))
    v = sweep_variants(base, [1, 3])
    assert list(v) == ["w8a8", "psq", "apsq_gs1", "apsq_gs3"]
    assert [(c.apsq.mode, c.apsq.gs) for c in v.values() if c.apsq is not None] == [("none", 1), ("psq", 1), ("apsq", 1), ("apsq", 3)]
    for c in v.values():
        assert c.model_dump(exclude={"apsq"}) == base.model_dump(exclude={"apsq"})
        assert c.apsq is not None and c.apsq.tile == 8 and c.apsq.exclude == ("classifier",)
    with pytest.raises(APSQError, match="apsq"):
        sweep_variants(parse_config({}), [1])


def test_accuracy_table_format():
    runs = {n: {"apsq": {"mode": m, "gs": g}, "accuracy": a}
            for n, m, g, a in [("w8a8", "none", 1, 0.8), ("psq", "psq", 1, 0.7), ("a3", "apsq", 3, 0.75),
                               ("a1", "apsq", 1, 0.72)]}
    assert accuracy_table(0.81, runs) == {"fp32": 0.81, "w8a8": 0.8, "psq": 0.7, "apsq": {"1": 0.72, "3": 0.75}}


def test_sweep_runs_reuses_and_plots(tmp_path, standin, make_config):
    base = parse_config(make_config(standin, qat={"steps": 2}, save_every=100))
    table = sweep(base, tmp_path / "s", [1, 2], progress=False, energy=False, command="test")
    assert set(table["apsq"]) == {"1", "2"}
    for key in ("fp32", "w8a8", "psq"):
        assert 0.0 <= table[key] <= 1.0
    assert table["seeds"] == [0] and table["qat_steps"] == 2 and table["command"] == "test"
    saved = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert saved["apsq"] == table["apsq"]
    png = (tmp_path / "s" / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the FP32 model is fine-tuned once and shared
    assert (tmp_path / "s" / "fp32" / "fp32.safetensors").exists()
    # a second sweep reuses the finished runs (nothing is retrained: files untouched)
    stamp = (tmp_path / "s" / "apsq_gs2" / "checkpoint.safetensors").stat().st_mtime_ns
    again = sweep(base, tmp_path / "s", [1, 2], progress=False, energy=False, command="test")
    assert again["apsq"] == table["apsq"]
    assert (tmp_path / "s" / "apsq_gs2" / "checkpoint.safetensors").stat().st_mtime_ns == stamp
    # a folder holding another config's run is refused
    other = parse_config(make_config(standin, qat={"steps": 3}, save_every=100))
    with pytest.raises(APSQError, match="different config"):
        sweep(other, tmp_path / "s", [1], progress=False, energy=False)


def test_sweep_refuses_a_tile_the_energy_model_does_not_price(tmp_path, standin, make_config):
    """One tile: a config trained at tile 8 is not priced as the 32-deep default array unless asked."""
    from apsq.eval.sweep import check_energy_tile

    base = parse_config(make_config(standin))  # tile 8
    with pytest.raises(APSQError, match=r"PSUM tile 8 does not match .*pe_array.rows = 32.*override_tile"):
        sweep(base, tmp_path / "s", [1], progress=False, energy=True)
    assert not (tmp_path / "s").exists()  # refused before anything ran
    assert check_energy_tile(base, override_tile=True) == 32
    tile32 = parse_config(make_config(standin, apsq={"mode": "apsq", "gs": 2, "tile": 32}))
    assert check_energy_tile(tile32) == 32
