"""Evaluation: the gs sweep (accuracy beside energy), result files and plots."""

from apsq.eval.report import accuracy_table, plot_accuracy_vs_gs
from apsq.eval.sweep import sweep, sweep_variants

__all__ = ["accuracy_table", "plot_accuracy_vs_gs", "sweep", "sweep_variants"]
