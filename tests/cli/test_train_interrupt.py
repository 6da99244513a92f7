"""Ctrl-C in `apsq train` names the checkpoint and the command that continues the run. Under a launcher
(`accelerate launch` / `torchrun`: WORLD_SIZE > 1) that is the same launch with --resume: the bare
`apsq train ... --resume` it printed before would continue on one process."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from apsq.cli import app


@pytest.mark.parametrize("world", ["1", "2"])
def test_an_interrupted_run_says_how_to_continue(tmp_path, monkeypatch, world):
    import apsq.train.loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(apsq.train.loop, "train", interrupted)
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: bert-tiny}\ndata: {name: rt-sentences}\n")
    r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--output", str(tmp_path / "run")])
    assert r.exit_code == 130
    text = " ".join(r.output.split())
    assert "interrupted: no checkpoint was written yet" in text
    if world == "1":
        assert "continue with apsq train --config" in text and text.rstrip().endswith("--resume")
    else:
        assert "continue with the same launch (2 processes)" in text and "-m apsq.cli train --config" in text
