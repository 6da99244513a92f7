"""A QAT variant of a study (:func:`apsq.beyond.variants.qat_accuracy`) is the setup's training config with the
variant's ``apsq`` keys and the short-QAT settings, built as validated copies (issue 27, item 4)."""

from __future__ import annotations

from apsq.beyond.variants import qat_accuracy
from apsq.eval.setup import load_setup
from apsq.train.config import APSQSection, load_config

CHANGED = {"apsq", "finetune", "qat", "eval", "data"}


def test_qat_variant_is_the_setup_config_with_the_variant(setup_files, tmp_path):
    fp32 = setup_files / "fp32.safetensors"
    s = load_setup(setup_files / "cfg.yaml", fp32, 96, device="cpu")
    v = APSQSection.model_validate({"mode": "psq", "gs": 1, "tile": 16})
    r = qat_accuracy(s, fp32, v, 2, tmp_path / "v", eval_limit=48)
    cfg = load_config(tmp_path / "v" / "config.json")
    assert cfg.apsq is not None and cfg.apsq.model_dump() == {"tile": 16, "mode": "psq", "gs": 1}
    assert (cfg.finetune.steps, cfg.finetune.init, cfg.qat.steps) == (0, str(fp32), 2)
    assert cfg.eval.after_calibration and cfg.data.eval_limit == 48
    assert cfg.qat.model_dump(exclude={"steps"}) == s.cfg.qat.model_dump(exclude={"steps"})
    assert cfg.model_dump(exclude=CHANGED) == s.cfg.model_dump(exclude=CHANGED)
    assert r["qat_steps"] == 2 and 0.0 <= r["accuracy"] <= 1.0 and r["calibrated_accuracy"] is not None


def test_run_variants_refuses_a_bad_variant_before_running_any():
    """A mapping is validated as an APSQSection first: the error names the variant and the field, and nothing
    runs (the setup is never touched; None would fail on first use)."""
    import pytest

    from apsq.beyond.variants import run_variants
    from apsq.errors import APSQError

    with pytest.raises(APSQError, match=r"variant 'bad'.*gs"):
        run_variants(None, {"good": {"mode": "apsq", "gs": 2}, "bad": {"mode": "apsq", "gs": 0}})  # type: ignore[arg-type]
    with pytest.raises(APSQError, match="qat_steps"):
        run_variants(None, {"good": {"mode": "apsq", "gs": 2}}, qat_steps=2)  # type: ignore[arg-type]
