"""``apsq deploy export`` / ``apsq deploy run`` on a real ``apsq train`` run (a tiny BERT, attention quantized)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from typer.testing import CliRunner

from apsq.cli import app
from apsq.errors import APSQError

runner = CliRunner()


def _standin(path):
    """Sentences in the Rotten Tomatoes ground-truth format (id, rating, text) with a word-level signal."""
    rng = random.Random(0)
    pos, neg = "good great moving funny warm".split(), "bad dull boring awful flat".split()
    lines = []
    for i in range(1, 121):
        rating = rng.choice([-2.0, -0.5, 0.7, 2.1])
        lines.append(f"{i}\t{rating}\tthe movie is " + " and ".join(rng.sample(pos if rating > 0 else neg, 2)))
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from apsq.train.config import parse_config
    from apsq.train.loop import train

    tmp = tmp_path_factory.mktemp("deploy_run")
    cfg = parse_config({
        "seed": 0,
        "model": {"name": "bert-tiny", "max_len": 16, "hidden_size": 32, "num_layers": 1},
        "data": {"name": "rt-sentences", "path": str(_standin(tmp / "rt.txt"))},
        "finetune": {"steps": 2, "batch_size": 8, "lr": 1e-3},
        "apsq": {"mode": "apsq", "gs": 2, "tile": 8, "exclude": ["classifier"], "attention_matmuls": True,
                 "overrides": {"*.pooler.dense": {"gs": 4}}},
        "qat": {"steps": 2, "batch_size": 8, "lr": 1e-4, "calib_batches": 2},
        "save_every": 2,
        "threads": 1,
    })
    train(cfg, tmp / "run", progress=False)
    return tmp / "run"


def test_export_and_run_golden(trained_run, tmp_path):
    prog = tmp_path / "prog"
    res = runner.invoke(app, ["deploy", "export", str(trained_run), "-o", str(prog)])
    assert res.exit_code == 0, res.output
    assert "engine layers" in res.output and (prog / "manifest.json").is_file()
    manifest = json.loads((prog / "manifest.json").read_text())
    assert manifest["host"]["builder"] == "apsq-train"
    assert {lay["op"] for lay in manifest["layers"]} == {"linear", "attention_qk", "attention_av"}
    assert {lay["gs"] for lay in manifest["layers"]} == {2, 4}
    out = tmp_path / "run.json"
    res = runner.invoke(app, ["deploy", "run", str(prog), "--limit", "10", "--batch-size", "4", "--json", str(out),
                              "--energy"])
    assert res.exit_code == 0, res.output
    assert "energy of what the engine did vs the energy model" in res.output
    summary = json.loads(out.read_text())
    assert summary["energy"]["all_counts_equal"] is True and len(summary["energy"]["layers"]) == len(manifest["layers"])
    assert summary["input_kind"] == "sentences"
    assert summary["sentences"] == 10 and summary["identical_logits"] == 10 and summary["identical_predictions"] == 10
    assert summary["sentences_checked_layer_by_layer"] == 10
    assert all(lay["checked_outputs"] == lay["outputs"] > 0 for lay in summary["per_layer"])
    sentences = tmp_path / "s.txt"
    sentences.write_text("a good and warm movie\nboring\n")
    res = runner.invoke(app, ["deploy", "run", str(prog), "--input", str(sentences), "--json", str(out),
                              "--batch-size", "1", "--layer-batches", "1"])
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    assert s["identical_logits"] == 2 and s["sentences_checked_layer_by_layer"] == 1
    if shutil.which("verilator"):
        res = runner.invoke(app, ["deploy", "run", str(prog), "--limit", "3", "--backend", "verilator", "--json", str(out)])
        assert res.exit_code == 0, res.output
        s = json.loads(out.read_text())
        assert s["identical_logits"] == 3 and s["rtl_cycles"] > 0 and s["rtl_lane_steps_per_s"] > 0


def test_cli_errors_are_one_line(trained_run, tmp_path):
    res = runner.invoke(app, ["deploy", "export", str(tmp_path / "nothing"), "-o", str(tmp_path / "p")])
    assert res.exit_code == 2 and res.output.strip().startswith("error:") and "does not exist" in res.output
    assert not (tmp_path / "p").exists()  # nothing written
    res = runner.invoke(app, ["deploy", "export", str(trained_run), "-o", str(tmp_path / "p"), "--shift-bits", "1",
                              "--frac-bits", "0"])
    assert res.exit_code == 2 and "outside the RAE's shifter range" in res.output
    assert not (tmp_path / "p").exists()
    res = runner.invoke(app, ["deploy", "run", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no manifest.json" in res.output


def test_export_and_run_a_digits_cnn_run(tmp_path):
    """An image classifier from ``apsq train`` (the digits CNN: three conv layers on the engine) exports and
    runs from the command line like a text model; a text file as its input is refused before anything runs.
    Export used to refuse it with "apsq deploy run takes text models (the digits CNN: use the Python API)"."""
    from apsq.train.config import parse_config
    from apsq.train.loop import train

    cfg = parse_config({
        "seed": 0, "model": {"name": "digits-cnn", "num_labels": 10},
        "data": {"name": "digits", "eval_split": "test", "train_limit": 64, "eval_limit": 16},
        "finetune": {"steps": 2, "batch_size": 16, "lr": 1e-3},
        "apsq": {"mode": "apsq", "gs": 2, "tile": 16, "exclude": ["classifier"]},
        "qat": {"steps": 1, "batch_size": 16, "lr": 1e-4, "calib_batches": 1},
        "save_every": 2, "threads": 1,
    })
    train(cfg, tmp_path / "run", progress=False)
    prog, out = tmp_path / "prog", tmp_path / "run.json"
    res = runner.invoke(app, ["deploy", "export", str(tmp_path / "run"), "-o", str(prog), "--lanes", "8"])
    assert res.exit_code == 0, res.output
    assert [lay["op"] for lay in json.loads((prog / "manifest.json").read_text())["layers"]] == ["conv2d"] * 3
    res = runner.invoke(app, ["deploy", "run", str(prog), "--limit", "6", "--batch-size", "4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    # counted as images (the summary said "sentences" for them)
    assert s["input_kind"] == "images" and "sentences" not in s
    assert s["images"] == 6 and s["identical_logits"] == 6 and s["images_checked_layer_by_layer"] == 6
    assert s["accuracy"] is not None
    text = tmp_path / "s.txt"
    text.write_text("a sentence\n")
    res = runner.invoke(app, ["deploy", "run", str(prog), "--input", str(text), "--json", str(tmp_path / "no.json")])
    assert res.exit_code == 2 and "takes images" in res.output and "--input eval" in res.output
    assert not (tmp_path / "no.json").exists()


def test_a_segmentation_run_is_refused_with_the_way_around():
    from apsq.deploy.batches import input_batches

    cfg = {"model": {"name": "segformer-b0", "num_labels": 12}, "data": {"name": "digit-scenes"}}
    with pytest.raises(APSQError, match=r"segformer-b0.*segmentation model.*apsq\.deploy\.export"):
        input_batches(cfg, "eval")


def test_export_with_an_engine_the_rae_cannot_build_is_one_line(trained_run, tmp_path):
    res = runner.invoke(app, ["deploy", "export", str(trained_run), "-o", str(tmp_path / "p"), "--depth", "1"])
    assert res.exit_code == 2 and res.output.startswith("error: the RAE instance: depth must be in [2, 65536]")
    assert not (tmp_path / "p").exists()


def test_progress_lines_estimate_the_rest_and_warn_on_amaranth(capsys):
    """``deploy run``'s progress: each batch's line gives the seconds so far and an estimate of the rest; on
    ``amaranth`` (hours for a MiniLM test split, with no word of it before) a line says so before the run."""
    import re

    from apsq.cli.deploy import _Progress

    p = _Progress("amaranth")
    p(4, 8)
    p(8, 8)
    lines = capsys.readouterr().err.splitlines()
    assert "--backend amaranth" in lines[0] and "--backend verilator" in lines[0] and "--limit" in lines[0]
    assert re.fullmatch(r"4/8 inputs, \d+ s, about \d+ s left", lines[1])
    assert re.fullmatch(r"8/8 inputs, \d+ s", lines[2])
    _Progress("golden")(1, 2)
    assert capsys.readouterr().err.startswith("1/2 inputs")


def test_a_checkpoint_of_ones_own_model_points_to_the_python_api(tmp_path):
    """A researcher with their own (non-``apsq train``) model saved its state dict and passed it to
    ``apsq deploy export``: the error was "corrupt or not a safetensors file ... delete it or point --output
    elsewhere", with no word of the Python export their model needs."""
    import torch
    from safetensors.torch import save_file

    torch.save({"w": torch.zeros(2)}, tmp_path / "mine.pt")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "mine.safetensors"))
    for f in ("mine.pt", "mine.safetensors"):
        res = runner.invoke(app, ["deploy", "export", str(tmp_path / f), "-o", str(tmp_path / "p")])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and "is not an apsq train run" in out
        assert "apsq.deploy.export(model, example_batch)" in out and "docs/deploy.md" in out
        assert not (tmp_path / "p").exists()


def test_energy_on_an_accelerator_of_ones_own(trained_run, tmp_path):
    # `apsq deploy run --energy` priced the engine's counts on the default accelerator only: a designer's
    # own PSUM buffer / RAE energies could not be used from the command line.
    import yaml

    from apsq.hw.accelerator import load_accelerator

    prog = tmp_path / "prog"
    assert runner.invoke(app, ["deploy", "export", str(trained_run), "-o", str(prog)]).exit_code == 0
    d = load_accelerator("default").model_dump()
    d["name"] = "my-accel"
    d["buffers"]["psum"]["read_pj_per_bit"] = d["buffers"]["psum"]["write_pj_per_bit"] = 1.0
    d["rae"] = {"shift_pj": 0.5, "add_pj": 0.5, "exponent_bits": 8}
    mine = tmp_path / "my.yaml"
    mine.write_text(yaml.safe_dump(d))
    out = {}
    for name, acc in (("default", None), ("mine", str(mine))):
        js = tmp_path / f"{name}.json"
        args = ["deploy", "run", str(prog), "--limit", "2", "--batch-size", "2", "--energy", "--json", str(js)]
        res = runner.invoke(app, args + (["--accelerator", acc] if acc else []))
        assert res.exit_code == 0, res.output
        out[name] = json.loads(js.read_text())["energy"]
    assert out["mine"]["accelerator"].startswith("my-accel") and out["mine"]["all_counts_equal"]
    a, b = out["default"]["total"], out["mine"]["total"]
    assert b["counted_psum_pj"] == pytest.approx(a["counted_psum_pj"] / 0.1375)  # 1.0 pJ/bit instead of 0.1375
    assert b["counted_rae_pj"] == pytest.approx(a["counted_rae_pj"] * 1.0 / 0.1244)
    # a bad file is refused naming it and its field, and --accelerator without --energy is refused, before running
    bad = tmp_path / "bad.yaml"
    bad.write_text(mine.read_text().replace("clock_mhz", "clock_mhzz"))
    for extra, needle in ((["--energy", "--accelerator", str(bad)], "clock_mhzz"),
                          (["--accelerator", str(mine)], "add --energy")):
        res = runner.invoke(app, ["deploy", "run", str(prog), "--limit", "1"] + extra)
        assert res.exit_code == 2 and res.output.strip().startswith("error:") and needle in res.output, res.output
    assert "bad.yaml" in runner.invoke(app, ["deploy", "run", str(prog), "--energy", "--accelerator", str(bad)]).output
