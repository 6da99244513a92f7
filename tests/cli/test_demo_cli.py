"""``apsq demo`` report: table and files from a demo_run result (the run itself: tests/train)."""

import json

from rich.console import Console

from apsq.cli.demo import _qat_table
from apsq.eval.demo_report import write_report as _qat_report

RESULT = {
    "fp32": 0.85,
    "fp32_interval95": 0.0217,
    "eval_examples": 1041,
    "variants": {
        "w8a8": {"mode": "none", "gs": 1, "accuracy": 0.84, "interval95": 0.0223, "calibrated_accuracy": 0.85,
                 "seconds": 3.0},
        "psq": {"mode": "psq", "gs": 1, "accuracy": 0.845, "interval95": 0.0220, "calibrated_accuracy": 0.83,
                "seconds": 3.0},
        "apsq_gs1": {"mode": "apsq", "gs": 1, "accuracy": 0.75, "interval95": 0.0263, "calibrated_accuracy": 0.74,
                     "seconds": 3.0},
        "apsq_gs2": {"mode": "apsq", "gs": 2, "accuracy": 0.78, "interval95": 0.0252, "calibrated_accuracy": 0.77,
                     "seconds": 3.0},
    },
    "energy_reduction": {"total": {"is": {"1": 0.5, "2": 0.44}, "ws": {"1": 0.03, "2": 0.03}}},
    "seconds": 12.0,
    "settings": {"qat_steps": 60},
    "full_recipe": "python results/sentiment_minilm/run_sentiment_minilm.py --seeds 0 1 2 3 4 --workers 2",
}


def _text(res):
    console = Console(record=True, width=200)
    _qat_table(res, console)
    return console.export_text()


def test_demo_table_shows_accuracy_interval_and_energy_per_variant():
    text = _text(RESULT)
    assert "0.7800 ± 0.025" in text and "44.0 %" in text and "FP32 accuracy 0.8500 ± 0.022" in text
    assert "1041 test sentences" in text
    row_w8a8 = next(line for line in text.splitlines() if "w8a8" in line)
    assert "%" not in row_w8a8  # energy applies to the APSQ variants only


def test_demo_says_whether_its_budget_closes_the_gap():
    text = _text(RESULT)  # best APSQ 7 pp below FP32
    assert "apsq_gs2" in text and "7.0 pp below FP32" in text and "does not close the gap" in text
    assert "results/sentiment_minilm/run_sentiment_minilm.py" in text
    close = json.loads(json.dumps(RESULT))
    close["variants"]["apsq_gs2"]["accuracy"] = 0.842
    assert "within 1.5 pp" in _text(close)


def test_demo_report_writes_json_and_two_panel_png(tmp_path):
    import matplotlib.image

    _qat_report(RESULT, tmp_path)
    assert json.loads((tmp_path / "demo.json").read_text())["variants"]["apsq_gs2"]["accuracy"] == 0.78
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    h, w = matplotlib.image.imread(tmp_path / "demo.png").shape[:2]
    assert w > 1.8 * h  # accuracy and energy side by side, not on twin axes


def test_cli_defaults_are_the_demo_runs():
    from apsq.cli import demo
    from apsq.eval import demo as train_demo

    assert (demo.QAT_STEPS, demo.FINETUNE_STEPS) == (train_demo.QAT_STEPS, train_demo.FINETUNE["steps"])


def test_demo_names_the_full_recipe_of_the_committed_table():
    """The demo sends a user to the full recipe: its seeds are those of the committed MiniLM table (it said
    three seeds, ``--seeds 0 1 2``, after the table had moved to five)."""
    from pathlib import Path

    from apsq.eval import demo as train_demo

    committed = json.loads((Path(__file__).parents[2] / "results/sentiment_minilm/sentiment_minilm.json").read_text())
    seeds = train_demo.FULL_RECIPE.split("--seeds", 1)[1].split("--", 1)[0].split()
    assert [int(s) for s in seeds] == committed["seeds"]
    words = {3: "three", 5: "five"}
    said = " ".join(_text({**RESULT, "full_recipe": train_demo.FULL_RECIPE}).split())
    assert f"{words[len(seeds)]} seeds" in said and train_demo.FULL_RECIPE in said


def test_demo_energy_is_the_mapper_schedule_labelled():
    """Issue 23 item 6: the tiled (mapper's) figures in the columns, the untiled ones beside, each with
    whether PSUMs spill, and one line saying what the number means."""
    from apsq.eval.sweep import ENERGY_MEANING

    res = json.loads(json.dumps(RESULT))
    no = {"baseline": False, "apsq": False}
    res["energy_reduction"] = {
        "schedule": "tiled", "meaning": ENERGY_MEANING.format(input="64 tokens"),
        "total": {"is": {"1": 0.0347, "2": 0.0347}, "ws": {"1": 0.034, "2": 0.034}},
        "spills": {"is": {"1": no, "2": no}, "ws": {"1": no, "2": no}},
        "untiled": {"total": {"is": {"1": 0.554, "2": 0.486}, "ws": {"1": 0.034, "2": 0.034}},
                    "spills": {"is": {"1": {"baseline": True, "apsq": False}, "2": {"baseline": True, "apsq": True}},
                               "ws": {"1": no, "2": no}}},
    }
    text = " ".join(_text(res).split())
    assert "energy saved IS (tiled)" in text and "3.5 %" in text and "48.6 %" not in text.split("Energy:")[0]
    assert "under the mapper's tiled schedule" in text and "64 tokens" in text
    assert "tiled: PSUMs spill to DRAM: INT32 baseline no, APSQ no." in text
    assert "untiled (fixed loop orders) for comparison: IS 48.6–55.4 %, WS 3.4 %" in text
    assert "INT32 baseline yes, APSQ yes" in text


def test_demo_plot_draws_both_schedules(tmp_path):
    res = json.loads(json.dumps(RESULT))
    res["energy_reduction"] = {"schedule": "tiled", "total": {"is": {"1": 0.03}},
                               "untiled": {"total": {"is": {"1": 0.55}},
                                           "spills": {"is": {"1": {"baseline": True, "apsq": False}}}}}
    _qat_report(res, tmp_path)
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
