"""``apsq sweep``'s printed table names the sweep's metric and the gs chosen on the selection split
(trial-vis: a segmentation sweep printed its mIoU under "accuracy", and not the gs it chose)."""

from __future__ import annotations

from apsq.cli.eval import _print_sweep


def _res(**extra) -> dict:
    res = {"fp32": 0.0357, "w8a8": 0.0358, "psq": 0.0358, "apsq": {"2": 0.0358, "3": 0.0357},
           "eval_split": "test", "energy_reduction": {}}
    res.update(extra)
    return res


def test_segmentation_sweep_prints_miou_and_the_chosen_gs(capsys):
    _print_sweep(_res(metric="miou", selected_gs=3, gs_selected_on="validation"))
    out = capsys.readouterr().out
    assert "gs sweep (test mIoU)" in out and "accuracy" not in out
    assert "apsq gs=2" in out and "3.58 %" in out
    assert "gs chosen on the validation split: 3" in out


def test_text_sweep_keeps_accuracy_and_says_nothing_of_a_choice_it_did_not_make(capsys):
    _print_sweep(_res())
    out = capsys.readouterr().out
    assert "gs sweep (test accuracy)" in out and "mIoU" not in out
    assert "gs chosen" not in out
