"""``apsq energy`` and ``apsq energy sweep`` through typer's test runner."""

import json

import pytest
import typer
from typer.testing import CliRunner

from apsq.cli.energy import register

KEYS = {"baseline_pj", "apsq_pj", "reduction", "psum_reduction", "psum_share_baseline", "breakdown"}


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)

    @a.command("noop")  # a second command keeps "energy" a named sub-app, as in the real CLI
    def _noop() -> None:
        pass

    return a


def _run(app, *args):
    return CliRunner().invoke(app, ["energy", *args])


@pytest.mark.parametrize("dataflow", ["is", "ws", "os"])
def test_json_for_a_builtin(app, dataflow):
    r = _run(app, "--model", "efficientvit-b1", "--image-size", "128", "--dataflow", dataflow, "--gs", "2", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert KEYS <= set(out)
    assert set(out["breakdown"]) == {"baseline", "apsq"}
    b = out["breakdown"]["baseline"]
    assert set(b["by_operand"]) == {"input", "weight", "psum", "output", "mac", "rae", "exponents"}
    assert set(b["by_level"]) == {"reg", "sram", "dram", "mac", "rae", "exponents"}
    assert sum(b["by_operand"].values()) == pytest.approx(out["baseline_pj"])
    assert sum(b["by_level"].values()) == pytest.approx(out["baseline_pj"])
    assert out["reduction"] == pytest.approx(1 - out["apsq_pj"] / out["baseline_pj"])
    if dataflow == "os":
        assert out["reduction"] == 0 and out["psum_share_baseline"] == 0
    else:
        assert 0 < out["reduction"] < 1 and 0 < out["psum_reduction"] <= 1


def test_text_per_layer_and_plot(app, tmp_path):
    png = tmp_path / "bd.png"
    r = _run(app, "--model", "bert-base", "--seq-len", "32", "-d", "is", "--per-layer", "--plot", str(png))
    assert r.exit_code == 0, r.output
    assert "reduction" in r.output and "per layer" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_per_layer_and_psum_bits(app):
    r = _run(
        app,
        "--model",
        "llama2-7b",
        "--phase",
        "decode",
        "--context",
        "64",
        "-d",
        "ws",
        "--psum-bits",
        "16",
        "--json",
        "--per-layer",
    )
    out = json.loads(r.output)
    assert out["psum_bits"] == 16 and len(out["layers"]["apsq"]) == 32 * 9 + 1
    assert out["psum_reduction"] == pytest.approx(0.5)  # beta 4 -> 2, no spill in decode


def test_trace_factory_file(app, tmp_path):
    f = tmp_path / "mymodel.py"
    f.write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    return nn.Sequential(nn.Linear(256, 64), nn.Linear(64, 8)), (torch.zeros(128, 256),)\n"
    )
    r = _run(app, "--trace", f"{f}:make", "-d", "ws", "--json", "--per-layer")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [ly["name"] for ly in out["layers"]["baseline"]] == ["0", "1"]


def test_trace_module_from_the_current_directory(app, tmp_path, monkeypatch):
    """``--trace mymodel:make`` beside mymodel.py works without PYTHONPATH=. (issue 23 item 6)."""
    import sys

    (tmp_path / "apsq_cwd_model.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    return nn.Sequential(nn.Linear(256, 64)), (torch.zeros(128, 256),)\n"
    )
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    r = _run(app, "--trace", "apsq_cwd_model:make", "-d", "ws", "--json")
    sys.modules.pop("apsq_cwd_model", None)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["workload"] == "apsq_cwd_model:make" and sys.path == path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "gpt-2"], "'bert-base', 'segformer-b0', 'efficientvit-b1', 'llama2-7b'"),
        (["--model", "bert-base", "-d", "rs"], "'is', 'ws', 'os'"),
        (["--model", "bert-base", "--gs", "0"], "'--gs'"),  # the parser's range check names the option
        (["-d", "ws"], "exactly one of --model"),
        (["--trace", "nomodule_xyz:f"], "cannot import module"),
        (["--model", "bert-base", "--accelerator", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_errors_exit_2_with_a_message(app, args, needle):
    r = _run(app, *args)
    assert r.exit_code == 2
    assert needle in " ".join(r.output.split())


def test_sweep_marks_spills(app, tmp_path):
    png = tmp_path / "sweep.png"
    r = _run(app, "sweep", "--model", "bert-base", "-d", "ws", "--values", "256,1024", "--json", "--plot", str(png))
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["option"] == "seq_len" and len(out["rows"]) == 2 * 5
    # WS live PSUMs: seq x 32 outputs; 64 KiB holds 512 INT32 rows, 2048 one-slot INT8 rows
    assert out["first_spill"]["baseline"] == 1024 and out["first_spill"]["gs=1"] is None
    assert png.exists()
    r = _run(app, "sweep", "--model", "bert-base", "--values", "a,b")
    assert r.exit_code == 2 and "comma-separated integers" in r.output


def test_per_layer_gs_from_an_apsq_config(app, tmp_path):
    cfg = tmp_path / "apsq.yaml"
    cfg.write_text("gs: 3\noverrides:\n  '*.intermediate.dense': {gs: 1}\n")
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "--gs-config", str(cfg), "--json", "--per-layer")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    gs = {ly["name"]: ly["gs"] for ly in out["layers"]["apsq"]}
    assert gs["bert.encoder.layer.0.intermediate.dense"] == 1 and gs["bert.encoder.layer.0.output.dense"] == 3
    assert out["gs"] == list(gs.values())  # mixed group sizes are reported per layer
    cfg.write_text("gs: 0\n")
    r = _run(app, "-m", "bert-base", "--gs-config", str(cfg))
    assert r.exit_code == 2 and "gs" in r.output


def test_trace_errors(app, tmp_path):
    f = tmp_path / "bad.py"
    f.write_text(
        "import torch\nfrom torch import nn\nclass M(nn.Module):\n    def forward(self, x):\n"
        "        return nn.functional.linear(x, torch.ones(3, 4)) * x.sum().item()\n"
        "def make():\n    return M(), (torch.zeros(2, 4),)\n"
    )
    r = _run(app, "--trace", f"{f}:make", "--json")
    assert r.exit_code == 2 and "tracing on the meta device failed" in " ".join(r.output.split())
    r = _run(app, "--trace", f"{f}:make", "--seq-len", "8")
    assert r.exit_code == 2 and "built-in models only" in " ".join(r.output.split())
    r = _run(app, "--trace", f"{f}:nothere")
    assert r.exit_code == 2 and "no attribute 'nothere'" in " ".join(r.output.split())


def test_trace_a_quantized_model_on_the_meta_device(app, tmp_path):
    """``--trace`` builds the factory on the meta device; a model ``apsq.quantize_`` has seen (its own gs,
    an excluded layer) traces there as on the CPU. It used to stop at the first quantized layer with
    "Tensor.item() cannot be called on meta tensors", so no quantized model could be priced from the CLI."""
    f = tmp_path / "apsq_qmodel.py"
    f.write_text(
        "import torch, apsq\nfrom torch import nn\n"
        "def make():\n"
        "    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(1), nn.Linear(512, 64), nn.Linear(64, 8))\n"
        "    apsq.quantize_(m, apsq.APSQConfig(gs=3, tile=32, exclude=['3']))\n"  # the array's rows (a tile 8 is refused: test_traced_tile.py)
        "    return m, (torch.zeros(2, 3, 8, 8),)\n"
    )
    r = _run(app, "--trace", f"{f}:make", "-d", "ws", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    got = [(ly["name"], ly["gs"], ly["full_precision"]) for ly in out["layers"]["apsq"]]
    assert got == [("0", 3, False), ("2", 3, False), ("3", got[2][1], True)]
    assert out["full_precision_layers"] == ["3"]
    assert out["gs"] == 3  # the quantized layers' gs (the excluded layer's placeholder 1 made it a list)
    r = _run(app, "--trace", f"{f}:make", "-d", "ws")
    assert r.exit_code == 0 and "apsq (gs=3, 8b)" in r.output  # was "gs=per-layer"

    # another gs for the traced model: refused, naming the flag that allows it; --other-gs prices it
    r = _run(app, "--trace", f"{f}:make", "-d", "ws", "--gs", "2", "--json")
    assert r.exit_code == 2 and "--other-gs" in " ".join(r.output.split())
    r = _run(app, "--trace", f"{f}:make", "-d", "ws", "--gs", "2", "--other-gs", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["gs"] == 2
    r = _run(app, "--trace", f"{f}:make", "-d", "ws", "--other-gs")
    assert r.exit_code == 2 and "give one of them" in " ".join(r.output.split())
    # the same with a --gs-config: refused without --other-gs, priced with it (gs 4, layer 2 at gs 1)
    cfg = tmp_path / "other.yaml"
    cfg.write_text("gs: 4\noverrides:\n  '2': {gs: 1}\n")
    r = _run(app, "--trace", f"{f}:make", "-d", "ws", "--gs-config", str(cfg), "--json")
    assert r.exit_code == 2 and "--other-gs" in " ".join(r.output.split())
    r = _run(app, "--trace", f"{f}:make", "-d", "ws", "--gs-config", str(cfg), "--other-gs", "--json")
    assert r.exit_code == 0, r.output
    got = {ly["name"]: ly["gs"] for ly in json.loads(r.output)["layers"]["apsq"]}
    assert got["0"] == 4 and got["2"] == 1

def test_text_report_names_the_baseline_width_and_beta(app):
    """``--baseline-bits 24 --psum-bits 12``: the tables said "INT32 baseline" whatever the baseline width;
    they now name INT24, and the summary states β (stored PSUM bits / act_bits) on both sides."""
    r = _run(app, "--model", "bert-base", "--seq-len", "16", "-d", "ws", "--baseline-bits", "24", "--psum-bits", "12")
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "INT24" in out and "INT32" not in out
    assert "stored PSUMs 24 -> 12 bits (β = stored PSUM bits / act_bits: 3 -> 1.5)" in out
    assert "50.00 % of PSUM energy" in out  # 1 - 12/24, nothing spills at 16 tokens


def test_sweep_refuses_a_phase_the_model_does_not_have(app):
    """``apsq energy sweep -m bert-base --phase decode`` swept seq_len as if --phase were not there (``apsq
    energy -m bert-base --phase decode`` refuses it); a phase other than prefill / decode is named too."""
    r = CliRunner().invoke(app, ["energy", "sweep", "-m", "bert-base", "--phase", "decode", "--values", "16"])
    assert r.exit_code == 2 and "--phase is llama2-7b's (prefill | decode); model 'bert-base' has none" in r.output
    r = CliRunner().invoke(app, ["energy", "sweep", "-m", "llama2-7b", "--phase", "train", "--values", "16"])
    assert r.exit_code == 2 and "--phase must be one of 'prefill', 'decode'; got 'train'" in r.output


def test_engine_zigzag_refuses_the_options_it_would_ignore(app, tmp_path):
    """``--engine zigzag --gs 4 --schedule tiled`` printed the gs 1, untiled comparison as if they applied (and
    ``--plot`` wrote nothing); each such option is now named, before any workload is traced."""
    png = tmp_path / "p.png"
    r = _run(app, "--model", "bert-base", "--engine", "zigzag", "--gs", "4", "--schedule", "tiled", "--plot", str(png))
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "--gs, --schedule tiled, --plot would be ignored" in out and "--engine apsq" in out
    assert not png.exists()
    r = _run(app, "--model", "bert-base", "--engine", "zigzag", "--mode", "psq")
    assert r.exit_code == 2 and "--mode psq would be ignored" in " ".join(r.output.split())


def test_gs_and_gs_config_together_are_refused(app, tmp_path):
    """``--gs 3 --gs-config FILE`` priced the config's gs and dropped the explicit --gs without a word."""
    cfg = tmp_path / "g.yaml"
    cfg.write_text("gs: 2\ntile: 32\n")
    r = _run(app, "--model", "bert-base", "--seq-len", "16", "--gs", "3", "--gs-config", str(cfg))
    assert r.exit_code == 2 and "--gs 3 and --gs-config" in r.output and "give one of them" in " ".join(r.output.split())


def test_os_report_does_not_repeat_os_beside_itself(app):
    """``apsq energy -d os`` titled its table "OS under both schedules, OS beside" with an OS column equal to
    its own baseline column."""
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "-d", "os")
    assert r.exit_code == 0, r.output
    assert "OS under both schedules (energy" in r.output and "OS beside" not in r.output
    r = _run(app, "-m", "bert-base", "--seq-len", "16", "-d", "ws")
    assert "WS under both schedules, OS beside" in r.output


def test_per_layer_mapping_shows_the_live_width_and_the_sweep_says_none(app, tmp_path):
    """``N>K>M x1 w512``: under the grouped order the per-layer table prints the live PSUM width (512 output
    columns of BERT-Base's FFN up-projection at INT8; 128 at INT32); a sweep with nothing spilling says
    ``none``, not Python's ``None``."""
    p = tmp_path / "ffn.yaml"
    p.write_text("layers:\n  - {name: up, m: 128, k: 768, n: 3072}\n")
    r = CliRunner(env={"COLUMNS": "240"}).invoke(
        app, ["energy", "--workload", str(p), "-d", "ws", "--gs", "1", "--schedule", "tiled", "--per-layer"])
    assert r.exit_code == 0, r.output
    assert "N>K>M x1 w128 / N>K>M x1 w512" in r.output
    r = CliRunner().invoke(app, ["energy", "sweep", "-m", "bert-base", "-d", "ws", "--values", "64", "--schedule",
                                 "tiled"])
    assert r.exit_code == 0, r.output
    assert "baseline: none" in r.output and "None" not in r.output
    assert r.output.count(" %)") == 4  # one value: the saving beside each of gs = 1..4 (the banks allow 4)
