"""Every command's bad input is a one-line error naming the option the user typed, and ``--help`` says what
each option takes (issue 25 item 12: a new user's run of the README; the typer/click reports of flags
shown as ``<bool>`` and of Markdown eating ``<placeholders>``)."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from apsq.cli import app
from apsq.train.checkpoint import atomic_save_tensors

RUNNER = CliRunner()


# typer vendors its own click (typer._click): walk the command tree and read parameter types by duck typing.
def _commands(cmd, path: tuple[str, ...] = ()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))
NUMBER_OPTIONS = [(" ".join(path), p) for path, cmd in COMMANDS for p in cmd.params
                  if p.param_type_name == "option" and p.type_descriptor.annotation in (int, float)]


def test_the_walk_finds_the_commands() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"demo", "train", "sweep", "energy", "tune-gs"} <= names
    assert len(NUMBER_OPTIONS) > 30


@pytest.mark.parametrize(("command", "option"), NUMBER_OPTIONS, ids=[f"{c}:{o.name}" for c, o in NUMBER_OPTIONS])
def test_every_number_option_declares_its_range(command: str, option) -> None:
    """A count, size or width given on the command line is checked by the parser (``min=`` / ``max=``), so
    ``--workers -2`` fails at once naming ``--workers`` instead of deep inside a run naming an internal key."""
    assert option.min is not None or option.max is not None, (
        f"apsq {command} {option.opts[0]}: declare its allowed range (typer.Option(..., min=, max=))")


@pytest.mark.parametrize("args", [["demo", "--workers", "-2"], ["demo", "--qat-steps", "-1"],
                                  ["demo", "--threads", "-1"], ["energy", "-m", "bert-base", "--gs", "0"],
                                  ["tune-gs", "-c", "x.yaml", "--budget-frac", "2"]])
def test_bad_numbers_are_one_error_naming_the_option(args: list[str]) -> None:
    res = RUNNER.invoke(app, args)
    assert res.exit_code == 2
    assert f"'{args[-2]}'" in res.output and "Traceback" not in res.output and "qat.steps" not in res.output


def test_flags_show_no_value_placeholder_and_defaults_show_whole() -> None:
    text = RUNNER.invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output
    assert "--resume" in text and "<bool>" not in text and "runs/<config name>" in text
    sweep = RUNNER.invoke(app, ["sweep", "--help"], env={"COLUMNS": "250"}).output
    assert "runs/sweep_<config>" in sweep and "<output>/sweep.json" in sweep and "<bool>" not in sweep
    assert "[x>=0]" in RUNNER.invoke(app, ["demo", "--help"], env={"COLUMNS": "250"}).output  # value options keep theirs


def _fake_train(tmp_path, stage: str, step: int, then: BaseException | None):
    def train(cfg, out, resume=False):
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(out / "checkpoint.safetensors", {"w": __import__("torch").zeros(1)},
                            {"stage": stage, "step": step})
        if then is not None:
            raise then
        return {"eval_split": "test", "fp32_accuracy": 0.5, "accuracy": 0.5}
    return train


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path, monkeypatch) -> None:
    import apsq.train.loop as loop

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: minilm}\n")
    monkeypatch.setattr("apsq.train.config.load_config", lambda p: object())
    monkeypatch.setattr(loop, "train", _fake_train(tmp_path, "qat", 120, KeyboardInterrupt()))
    res = RUNNER.invoke(app, ["train", "-c", str(cfg), "-o", str(tmp_path / "run")])
    assert res.exit_code == 130
    assert "interrupted: the last checkpoint holds qat step 120" in res.output and "--resume" in res.output
    monkeypatch.setattr(loop, "train", _fake_train(tmp_path, "qat", 120, None))
    res = RUNNER.invoke(app, ["train", "-c", str(cfg), "-o", str(tmp_path / "run"), "--resume"])
    assert res.exit_code == 0 and "from its checkpoint: qat step 120" in res.output
