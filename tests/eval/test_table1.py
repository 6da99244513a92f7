"""``apsq paper table1``: each row's commands, and the table collected from the result JSONs of every
supported format (gs sweep, zero_shot.json, glue.json), beside the paper's numbers."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apsq.errors import APSQError
from apsq.eval.table1 import (
    APSQ_STEP_RATIO,
    ROWS,
    collect_row,
    dry_run,
    gpu_hours,
    scores_of,
    select_rows,
    table1,
    table1_markdown,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_rows_commands_parse_and_name_their_configs():
    from cli_parse import parse

    for r in dry_run(list(ROWS), ROOT):
        parse(shlex.split(r["full"])[1:])
        cfg = shlex.split(r["full"])[shlex.split(r["full"]).index("--config") + 1]
        assert (ROOT / cfg).is_file(), cfg
        assert r["needs"] == "GPU + network" and r["gpu_estimate"]["estimate"] is True


def test_gpu_estimate_follows_its_formula():
    row = next(r for r in ROWS if r.key == "bert-base-glue")
    e = gpu_hours(row)
    r = APSQ_STEP_RATIO
    flops = (6 * row.fp_examples + 6 * (6 * r + 2) * row.qat_examples + (1 + 6 * r) * 2 * row.eval_units
             ) * e["gmacs_per_unit"] * 1e9
    assert e["hours"] == pytest.approx(flops / 50e12 / 3600, abs=0.06)


def test_step_ratio_is_the_largest_measured():
    """The estimate's APSQ step ratio is the committed benchmark's largest APSQ INT8 layer ratio (in range,
    per tensor or per channel); it said 1.88, "the largest measured", after a rerun had measured 1.95."""
    bench = json.loads((ROOT / "results/bench/bench_layer.json").read_text())
    apsq = [shape["ratio_vs_fp32"] for name, v in bench.items()
            if name.startswith("apsq_gs") and not name.endswith(("_baseline", "_saturating", "_tiles", "_lsq"))
            for shape in v["shapes"].values()]
    assert len(apsq) == 10 and APSQ_STEP_RATIO == round(max(apsq), 2)


def test_scores_of_every_format():
    sweep = {"fp32": 0.80, "w8a8": 0.79, "apsq": {"1": 0.75, "2": 0.79, "3": 0.78}}
    assert scores_of(sweep)[:2] == (0.80, {1: 0.75, 2: 0.79, 3: 0.78})
    mc = {"fp32": {"acc": 0.5}, "apsq": {"2": {"acc": 0.45, "acc_norm": 0.6}}}
    assert scores_of(mc)[:2] == (0.5, {2: 0.45})
    zs = {"tasks": ["piqa"], "variants": {"fp": {"average": 0.6}, "w8a8": {"average": 0.59},
                                          "apsq_gs4": {"average": 0.58}}}
    assert scores_of(zs)[:2] == (0.6, {4: 0.58})
    glue = {"glue_average": {"fp32": {"average": 0.81}, "apsq_gs2": {"average": 0.805}}}
    assert scores_of(glue)[:2] == (0.81, {2: 0.805})
    with pytest.raises(APSQError, match="unrecognised result JSON"):
        scores_of({"loss": 1.0})


def test_full_run_wins_over_the_stand_in_and_validation_selection_is_kept(tmp_path):
    row = next(r for r in ROWS if r.key == "llama2-7b-zero-shot")
    stand = tmp_path / row.standin_json[0]
    stand.parent.mkdir(parents=True)
    stand.write_text(json.dumps({"fp32": {"acc": 0.40}, "apsq": {"1": {"acc": 0.35}, "2": {"acc": 0.38}}}))
    r = collect_row(row, tmp_path, energy=False)
    assert r["measured_on"].startswith("stand-in") and r["best_gs"] == 2 and r["drop"] == pytest.approx(2.0)
    assert r["gs_chosen"].startswith("best on the evaluated split")
    assert "38.00 (gs=2, chosen on test)" in table1_markdown({"rows": [r]})  # the cell says how gs was chosen
    full = tmp_path / row.full_json
    full.parent.mkdir(parents=True)
    full.write_text(json.dumps({"tasks": ["piqa"], "selected_gs": 1, "variants": {
        "fp": {"average": 0.70}, "apsq_gs1": {"average": 0.69}, "apsq_gs2": {"average": 0.695}}}))
    r = collect_row(row, tmp_path, energy=True)
    assert r["measured_on"] == "the paper's model and data" and r["best_gs"] == 1  # chosen on validation data
    assert r["drop"] == pytest.approx(1.0) and r["gs_chosen"] == "on validation data"
    assert r["energy"]["gs"] == 1 and 0 < r["energy"]["is"]["psum"] <= 1
    md = table1_markdown({"rows": [r]})
    assert "LLaMA2-7B" in md and "+1.00 pp" in md and "0.59 %" in md and "31.7×" in md
    assert "69.00 (gs=1, chosen not on test)" in md
    # apsq eval zero-shot --selection-items / apsq paper glue: where the gs was chosen, in words
    for on, words in (("train split", "on the tasks' training splits"),
                      ("held-out train rows", "on rows held out of the training split")):
        full.write_text(json.dumps({"tasks": ["piqa"], "selected_gs": 1, "gs_selected_on": on, "variants": {
            "fp": {"average": 0.70}, "apsq_gs1": {"average": 0.69}, "apsq_gs2": {"average": 0.695}}}))
        assert collect_row(row, tmp_path, energy=False)["gs_chosen"] == words


def test_rows_on_this_repository_and_the_command(tmp_path):
    from apsq.cli import app

    res = table1(select_rows(["bert-base-glue"]), ROOT, energy=False)
    r = res["rows"][0]
    src = json.loads((ROOT / r["source"]).read_text())
    best = str(src["selected_gs"]) if "selected_gs" in src else max(src["apsq"], key=lambda g: src["apsq"][g])
    assert r["best_gs"] == int(best) and r["drop"] == pytest.approx(100 * (src["fp32"] - src["apsq"][best]), abs=1e-3)
    out = tmp_path / "t1.json"
    run = CliRunner().invoke(app, ["paper", "table1", "--rows", "bert-base-glue", "--root", str(ROOT), "--json",
                                   str(out), "--no-energy"])
    assert run.exit_code == 0, run.output
    assert json.loads(out.read_text())["rows"][0]["drop"] == r["drop"] and "BERT-Base" in run.output
    dry = CliRunner().invoke(app, ["paper", "table1", "--dry-run"])
    assert dry.exit_code == 0 and all(row.full_command in " ".join(dry.output.split()) for row in ROWS)
    bad = CliRunner().invoke(app, ["paper", "table1", "--rows", "bert"])
    assert bad.exit_code == 2 and "unknown rows ['bert']" in bad.output
    empty = CliRunner().invoke(app, ["paper", "table1", "--rows", ",,", "--dry-run"])  # was: every row
    assert empty.exit_code == 2 and "--rows: no row named" in empty.output


def test_segmentation_study_format_uses_its_validation_choice(tmp_path):
    row = next(r for r in ROWS if r.key == "segformer-b0-ade20k")
    f = tmp_path / row.standin_json[0]
    f.parent.mkdir(parents=True)
    m = {"test_miou": {"fp32": {"mean": 0.62}, "w8a8": {"mean": 0.61}, "apsq_gs1": {"mean": 0.55},
                       "apsq_gs2": {"mean": 0.60}, "apsq_gs4": {"mean": 0.605}},
         "best_gs": {"chosen_on_validation": "apsq_gs2"}}
    f.write_text(json.dumps({"models": {"segformer-b0": m, "efficientvit-b1": m}}))
    r = collect_row(row, tmp_path, energy=False)
    assert r["best_gs"] == 2 and r["gs_chosen"] == "on validation data" and r["drop"] == pytest.approx(2.0)
    assert r["metric"] == "miou" and "mIoU" in table1_markdown({"rows": [r]})
    with pytest.raises(APSQError, match="no model 'x'"):
        scores_of(json.loads(f.read_text()), "x")


def test_a_root_that_is_not_a_folder_is_an_error_not_a_table_of_not_run(tmp_path):
    """``--root`` with a typo printed every row as "not run" and exited 0 (trial-vis)."""
    from apsq.cli import app

    out = tmp_path / "t1.json"
    for root in (tmp_path / "nowhere", out.with_suffix(".txt")):
        if root.suffix:
            root.write_text("a file")
        run = CliRunner().invoke(app, ["paper", "table1", "--root", str(root), "--no-energy", "--json", str(out)])
        assert run.exit_code == 2 and "--root" in run.output, run.output
        assert not out.exists()


def test_a_stand_in_sweep_at_the_full_runs_path_is_not_reported_as_the_papers(tmp_path):
    """A digit-scenes sweep saved at ``runs/sweep_segformer_ade20k/sweep.json`` was reported as measured on
    "the paper's model and data" (trial-vis)."""
    row = next(r for r in ROWS if r.key == "segformer-b0-ade20k")
    f = tmp_path / row.full_json
    f.parent.mkdir(parents=True)
    sweep = {"fp32": 0.0357, "w8a8": 0.0358, "psq": 0.0358, "apsq": {"2": 0.0358}, "metric": "miou",
             "model": "segformer-b0", "dataset": "digit-scenes", "eval_split": "test"}
    f.write_text(json.dumps(sweep))
    got = collect_row(row, tmp_path, energy=False)
    assert got["measured_on"].startswith("segformer-b0 on digit-scenes: not the paper's ADE20K")
    f.write_text(json.dumps({**sweep, "dataset": "ade20k"}))
    assert collect_row(row, tmp_path, energy=False)["measured_on"] == "the paper's model and data"
