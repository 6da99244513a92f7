"""``apsq demo`` report: table and files from a demo_run result (the run itself: tests/train)."""

import json

from rich.console import Console

from apsq.demo import _qat_report, _qat_table

RESULT = {
    "fp32": 0.85,
    "variants": {
        "w8a8": {"mode": "none", "gs": 1, "accuracy": 0.84, "calibrated_accuracy": 0.85, "seconds": 3.0},
        "psq": {"mode": "psq", "gs": 1, "accuracy": 0.845, "calibrated_accuracy": 0.83, "seconds": 3.0},
        "apsq_gs1": {"mode": "apsq", "gs": 1, "accuracy": 0.75, "calibrated_accuracy": 0.74, "seconds": 3.0},
        "apsq_gs2": {"mode": "apsq", "gs": 2, "accuracy": 0.78, "calibrated_accuracy": 0.77, "seconds": 3.0},
    },
    "energy_reduction": {"total": {"is": {"1": 0.5, "2": 0.44}, "ws": {"1": 0.03, "2": 0.03}}},
    "seconds": 12.0,
}


def test_demo_table_shows_accuracy_and_energy_per_variant():
    console = Console(record=True, width=140)
    _qat_table(RESULT, console)
    text = console.export_text()
    assert "0.7800" in text and "44.0 %" in text and "FP32 accuracy 0.8500" in text
    row_w8a8 = next(line for line in text.splitlines() if "w8a8" in line)
    assert "%" not in row_w8a8  # energy applies to the APSQ variants only


def test_demo_report_writes_json_and_png(tmp_path):
    _qat_report(RESULT, tmp_path)
    assert json.loads((tmp_path / "demo.json").read_text())["variants"]["apsq_gs2"]["accuracy"] == 0.78
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
