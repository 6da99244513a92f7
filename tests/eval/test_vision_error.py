"""Vision output error per PSUM variant on real photos (random-init models, calibration only)."""

import pytest
import torch

from apsq.errors import APSQError
from apsq.eval.vision import sample_photos, vision_output_error


def test_sample_photos_are_normalised_real_images():
    x = sample_photos(64)
    assert x.shape == (2, 3, 64, 64)
    assert -3 < float(x.mean()) < 3 and float(x.std()) > 0.3
    assert not torch.allclose(x[0], x[1])


def test_output_error_is_measured_per_variant():
    res = vision_output_error("efficientvit-b1", 64, variants=(("w8a8", "none", 1), ("apsq_gs1", "apsq", 1)))
    rows = res["variants"]
    for row in rows.values():
        assert 0 < row["rel_error"] < 2 and 0 <= row["changed_pixels"] <= 1
    assert rows["w8a8"]["rel_error"] < 1.0


def test_unknown_model_is_a_clear_error():
    with pytest.raises(APSQError, match="segformer-b0"):
        vision_output_error("resnet50", 64)


def test_cli_rejects_unknown_model():
    from typer.testing import CliRunner

    from apsq.cli import app

    res = CliRunner().invoke(app, ["eval", "vision", "--models", "alexnet", "--image-size", "64"])
    assert res.exit_code == 1 and "segformer-b0" in res.output


@pytest.mark.parametrize("args,match", [(["--models", "alexnet"], "--models must be one of"),
                                        (["--models", ","], "--models: name at least one"),
                                        (["--image-size", "16"], "--image-size must be")])
def test_cli_errors_name_the_options_as_spelled(args, match, monkeypatch):
    """The command's errors name ``--models`` / ``--image-size``, not the API's ``models`` / ``image_size``
    (trial-vis), before any model runs."""
    from typer.testing import CliRunner

    import apsq.eval.vision as vision
    from apsq.cli import app

    monkeypatch.setattr(vision, "vision_output_error", lambda *a, **k: pytest.fail("a model ran"))
    res = CliRunner().invoke(app, ["eval", "vision", *args])
    assert res.exit_code == 1 and match in " ".join(res.output.split())


def test_run_vision_checks_every_model_before_running_any(tmp_path, monkeypatch):
    """``apsq eval vision --models segformer-b0,segformr`` ran Segformer (minutes at 512 px) and only then
    failed on the typo (trial-vis)."""
    import apsq.eval.vision as vision
    from apsq.errors import APSQError

    ran = []
    monkeypatch.setattr(vision, "vision_output_error", lambda *a, **k: ran.append(a))
    out = tmp_path / "v.json"
    for models, size, match in ((["segformer-b0", "segformr"], 32, "models must be one of"),
                                ([], 32, "models: name at least one"),
                                (["efficientvit-b1"], 16, "image_size must be")):
        with pytest.raises(APSQError, match=match):
            vision.run_vision(models, size, 0, out, None, progress=False)
    assert ran == [] and not out.exists()
