"""The program format: round trip, schema file, version check, corrupted manifests and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import apsq
from apsq import deploy
from apsq.deploy.program import MANIFEST, SCHEMA_VERSION, TENSORS
from apsq.errors import APSQError
from deploy_models import conv_net, tiny_bert

ROOT = Path(__file__).resolve().parents[2]


def test_round_trip(tmp_path):
    model, batch = tiny_bert(gs=2)
    prog = deploy.export(model, batch)
    deploy.save(prog, tmp_path / "p")
    back = deploy.load(tmp_path / "p")
    assert back.manifest == prog.manifest and back.manifest.schema_version == SCHEMA_VERSION
    assert set(back.tensors) == set(prog.tensors)
    assert all(torch.equal(back.tensors[k], v) for k, v in prog.tensors.items())
    rep = deploy.run(back, batch, model=model)  # the loaded program runs as the exported one
    assert rep.outputs_equal is True


def test_schema_file_is_current():
    """docs/deploy-program.schema.json is what the code validates (regenerate it when the format changes)."""
    on_disk = json.loads((ROOT / "docs" / "deploy-program.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(deploy.json_schema()))
    assert f"#v{SCHEMA_VERSION}" in on_disk["$id"]


@pytest.fixture
def saved(tmp_path):
    model, x = conv_net()
    deploy.save(deploy.export(model, x), tmp_path / "p")
    return tmp_path / "p"


def _edit(folder: Path, fn) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    fn(m)
    (folder / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(schema_version=SCHEMA_VERSION + 1), "schema_version 2, this apsq reads version 1"),
    (lambda m: m.update(format="onnx"), "not an apsq engine program"),
    (lambda m: m["layers"][0].update(s0=1 - m["layers"][0]["s0"]), "layers.0: .*does not encode gs"),
    (lambda m: m["layers"][0]["s2"].reverse(), "layers.0: .*closing flags"),
    (lambda m: m["layers"][1]["engine_exponents"].pop(), "layers.1: .*one entry per step"),
    (lambda m: m["layers"][0].update(gs="two"), "layers.0.gs"),
    (lambda m: m["layers"][0].update(extra_field=1), "layers.0.extra_field"),
    (lambda m: m["layers"].reverse(), "execution order"),
    (lambda m: m["layers"][0]["weight_exponents"].__setitem__(0, m["layers"][0]["weight_exponents"][0] + 1),
     "does not match the manifest's tensors_sha256|"),
])
def test_corrupted_manifest_refused(saved, edit, message):
    _edit(saved, edit)
    if message.endswith("|"):  # a consistent manifest with another content: still loads (the digest is of tensors)
        deploy.load(saved)
        return
    with pytest.raises(APSQError, match=message):
        deploy.load(saved)


def test_tensor_file_mismatch_and_garbage_refused(saved, tmp_path):
    other_model, other_x = conv_net(seed=7)
    deploy.save(deploy.export(other_model, other_x), tmp_path / "q")
    (saved / TENSORS).write_bytes((tmp_path / "q" / TENSORS).read_bytes())
    with pytest.raises(APSQError, match="tensors_sha256"):
        deploy.load(saved)
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(APSQError, match="not valid JSON"):
        deploy.load(saved)
    with pytest.raises(APSQError, match="no manifest.json"):
        deploy.load(tmp_path / "nowhere")


def test_refuses_uncalibrated_layer(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(16, 4))
    apsq.quantize_(m, apsq.APSQConfig(tile=8))
    with pytest.raises(APSQError, match="layer 0: .*not calibrated.*never calibrates"):
        deploy.export(m)


def test_refuses_gs_above_the_banks():
    model, _ = conv_net(gs=5)
    with pytest.raises(APSQError, match="layer 0: gs=5 needs 5 PSUM banks, the RAE has 4"):
        deploy.export(model)


def test_refuses_shift_outside_the_rtl_range():
    model, _ = conv_net()
    with pytest.raises(APSQError, match=r"layer 0: PSUM shifts span \[.*outside the RAE's shifter range \[0, 1\]"):
        deploy.export(model, frac_bits=0, shift_bits=1)


def test_refuses_tile_sums_beyond_the_inputs():
    model, _ = conv_net()
    with pytest.raises(APSQError, match="layer 0: its worst-case tile sum .* needs 1[0-9] signed bits.* have 12"):
        deploy.export(model, tile_bits=12)
    wide, _ = conv_net(tile=64, act_bits=16, weight_bits=16)  # 27 x 2^15 x 2^15: beyond 32 bits
    with pytest.raises(APSQError, match="layer 0: its worst-case tile sum .* signed bits, the RAE's tile-sum inputs have 32"):
        deploy.export(wide, shift_bits=6)  # a shifter wide enough: the tile sums are what fails


def test_refuses_other_modes_and_nothing_quantized():
    model, _ = conv_net(mode="psq")
    with pytest.raises(APSQError, match="layer 0: mode 'psq'; the RAE runs mode 'apsq' only"):
        deploy.export(model)
    with pytest.raises(APSQError, match="no quantized layer"):
        deploy.export(torch.nn.Linear(4, 4))


def test_widths_derived_from_the_trained_codes():
    model, x = conv_net()
    prog = deploy.export(model, x)
    for lay, mod in zip(prog.layers, (model[0], model[3]), strict=True):
        wc = prog.tensor(lay, "weight_codes").to(torch.int64).reshape(mod.weight.shape[0], -1)
        k = wc.shape[1]
        pad = torch.zeros(wc.shape[0], lay.n_steps * lay.tile, dtype=torch.int64)
        pad[:, :k] = wc.abs()
        assert lay.max_tile_sum == int(pad.reshape(wc.shape[0], lay.n_steps, lay.tile).sum(-1).max()) * 128
        assert lay.tile_sum_bits == lay.max_tile_sum.bit_length() + 1
        e = torch.tensor(lay.engine_exponents)
        assert torch.equal(e, torch.tensor(lay.psum_exponents)[:, None] - lay.act_exponent
                           - torch.tensor(lay.weight_exponents)[None])
        assert torch.equal(prog.tensor(lay, "bias_units").double() * torch.exp2(
            torch.tensor(lay.weight_exponents, dtype=torch.float64) + lay.act_exponent), mod.bias.double())


@pytest.mark.parametrize(("engine", "needle"), [
    ({"depth": 1}, "depth must be in [2, 65536], got 1"),
    ({"lanes": 2000}, "lanes must be in [1, 1024], got 2000"),
    ({"shift_bits": 8}, "shift_bits must be in [1, 7], got 8"),
    ({"frac_bits": 40}, "frac_bits must be in [0, 31], got 40"),
])
def test_refuses_an_engine_outside_the_rae_limits_before_any_work(engine, needle):
    """``apsq deploy export --depth 1`` (the option's own minimum is 1) ended in a pydantic ValidationError
    traceback from EngineSpec; every engine parameter is now checked by the RAE's own limits first."""
    model, x = conv_net()
    with pytest.raises(APSQError, match="the RAE instance: " + needle.replace("[", r"\[").replace("]", r"\]")):
        deploy.export(model, x, **engine)
