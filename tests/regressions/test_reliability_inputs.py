"""Issue 16 items 1-6: bad input is a clear APSQError (or a literal message), never a silent misreading.

1 a string where a list of patterns is expected is one element; other non-lists are errors;
2 booleans given as strings (or numbers) are refused everywhere a YAML bool is read;
3 a YAML file that is not UTF-8 is an APSQError naming the file;
4 every numeric accelerator field has a finite, sane range;
5 user text and shapes are printed literally, never as rich markup;
6 ``apsq train`` model / data pairs are validated up front with the allowed values named.
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from apsq.errors import APSQError, check_str_list, literal, print_error, read_yaml
from apsq.nn.config import APSQConfig

ACCEL_YAML = "src/apsq/accelerators/accel_28nm_int8.yaml"


# --- 1: strings where a list of patterns is expected ------------------------------------------
def test_string_pattern_is_one_element_everywhere():
    cfg = APSQConfig.from_dict({"exclude": "classifier", "layer_types": "linear"})
    assert cfg.exclude == ("classifier",)
    assert cfg.layer_types == ("linear",)
    assert not cfg.for_module("classifier").enabled  # the classifier really is left in full precision
    assert cfg.for_module("c").enabled  # ... and a single letter is not a pattern
    assert APSQConfig(exclude="head.*").exclude == ("head.*",)  # the Python API too


@pytest.mark.parametrize("field,value,match", [
    ("exclude", {"a": 1}, "exclude must be a list of strings"),
    ("exclude", 3, "exclude must be a list of strings"),
    ("exclude", ["classifier", 7], "exclude must be a list of strings; 7"),
    ("layer_types", "lstm", "layer_types entries must be among 'linear'.*; got 'lstm'"),
    ("layer_types", ["linear", None], "layer_types must be a list of strings"),
    ("overrides", ["classifier"], "overrides must be a mapping"),
    ("overrides", {1: {"gs": 2}}, "overrides keys must be module-name patterns"),
])
def test_non_list_patterns_rejected(field, value, match):
    with pytest.raises(APSQError, match=match):
        APSQConfig.from_dict({field: value})


def test_pattern_string_in_train_config_and_a2q():
    import torch

    from apsq.beyond.a2q import a2q_quantize_
    from apsq.train.config import parse_config

    assert parse_config({"apsq": {"exclude": "classifier"}}).apsq.exclude == ("classifier",)
    m = torch.nn.Sequential()
    m.add_module("body", torch.nn.Linear(8, 8))
    m.add_module("classifier", torch.nn.Linear(8, 2))
    pytest.importorskip("brevitas")
    a2q_quantize_(m, 16, exclude="classifier")
    assert type(m.classifier) is torch.nn.Linear and type(m.body) is not torch.nn.Linear


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=12))
def test_check_str_list_never_splits_a_string(s):
    assert check_str_list("exclude", s) == (s,)
    assert check_str_list("exclude", [s, s]) == (s, s)


# --- 2: booleans as strings -------------------------------------------------------------------
@pytest.mark.parametrize("field", ["attention_matmuls", "check_finite", "weight_per_channel", "enabled"])
@pytest.mark.parametrize("value", ["false", "true", "no", 0, 1, None])
def test_apsq_config_bools_are_real_bools(field, value):
    with pytest.raises(APSQError, match=f"{field} must be true or false"):
        APSQConfig.from_dict({field: value})


def test_override_bool_as_string_names_the_layer():
    with pytest.raises(APSQError, match=r"overrides\['classifier'\]: enabled must be true or false.*'false'"):
        APSQConfig.from_dict({"overrides": {"classifier": {"enabled": "false"}}})


def test_train_config_bools_strict_and_no_bool_numbers():
    from apsq.train.config import parse_config

    with pytest.raises(APSQError, match="eval.after_calibration"):
        parse_config({"eval": {"after_calibration": "false"}})
    with pytest.raises(APSQError, match="apsq.*attention_matmuls must be true or false"):
        parse_config({"apsq": {"attention_matmuls": "false"}})
    for where, value in (({"seed": True}), "seed"), (({"qat": {"steps": True}}), "qat.steps"):
        with pytest.raises(APSQError, match=value):
            parse_config(where)
    assert parse_config({"eval": {"after_calibration": True}}).eval.after_calibration is True


def test_yaml_quoted_false_in_a_file(tmp_path):
    p = tmp_path / "gs.yaml"
    p.write_text('gs: 2\nattention_matmuls: "false"\n')
    with pytest.raises(APSQError, match="attention_matmuls must be true or false"):
        APSQConfig.from_yaml(p)
    p.write_text("gs: 2\nattention_matmuls: false\nexclude: classifier\n")
    cfg = APSQConfig.from_yaml(p)
    assert cfg.attention_matmuls is False and cfg.exclude == ("classifier",)


# --- 3: non-UTF-8 YAML ------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"\xff\xfe", b"gs: 2\nname: caf\xe9\n", b"\x00\x81\x82"])
def test_non_utf8_yaml_names_the_file(tmp_path, data):
    p = tmp_path / "bin.yaml"
    p.write_bytes(data)
    with pytest.raises(APSQError, match=r"accelerator file '.*bin\.yaml' is not UTF-8"):
        read_yaml(p, "accelerator file")
    from apsq.hw.accelerator import load_accelerator
    from apsq.train.config import load_config

    with pytest.raises(APSQError, match="bin.yaml' is not UTF-8"):
        load_accelerator(p)
    with pytest.raises(APSQError, match="bin.yaml' is not UTF-8"):
        load_config(p)
    with pytest.raises(APSQError, match="bin.yaml' is not UTF-8"):
        APSQConfig.from_yaml(p)


def test_yaml_folder_and_bom(tmp_path):
    with pytest.raises(APSQError, match="is a folder"):
        read_yaml(tmp_path, "config file")
    p = tmp_path / "bom.yaml"
    p.write_bytes("\ufeffgs: 3\n".encode())  # UTF-8 with a byte-order mark is still UTF-8
    assert read_yaml(p, "config file") == {"gs": 3}


# --- 4: numeric ranges of the accelerator file ------------------------------------------------
def _accel() -> dict:
    return yaml.safe_load(Path(ACCEL_YAML).read_text())


@pytest.mark.parametrize("path,value", [
    (("pe_array", "rows"), 10**20),
    (("pe_array", "cols"), 10**20),
    (("clock_mhz",), math.inf),
    (("clock_mhz",), math.nan),
    (("clock_mhz",), 1e300),
    (("technology_nm",), math.inf),
    (("dram", "bandwidth_gbs"), math.inf),
    (("dram", "read_pj_per_bit"), math.nan),
    (("pe_array", "mac_pj"), 1e300),
    (("buffers", "psum", "capacity_kib"), math.inf),
    (("buffers", "psum", "banks"), 10**30),
    (("buffers", "input", "word_bits"), 2**40),
])
def test_accelerator_numbers_finite_and_bounded(tmp_path, path, value):
    from apsq.hw.accelerator import load_accelerator

    d = copy.deepcopy(_accel())
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    f = tmp_path / "acc.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(APSQError, match="field '" + ".".join(path) + "'"):
        load_accelerator(f)


@pytest.mark.parametrize("path", [("pe_array", "rows"), ("clock_mhz",), ("buffers", "psum", "banks")])
def test_accelerator_bool_is_not_a_number(path):
    from apsq.hw.accelerator import Accelerator

    d = copy.deepcopy(_accel())
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = True
    with pytest.raises(APSQError, match="field '" + ".".join(path) + "'.*boolean"):
        Accelerator.from_dict(d)


def test_accelerator_yaml_inf_literal(tmp_path):
    from apsq.hw.accelerator import load_accelerator

    text = Path(ACCEL_YAML).read_text()
    f = tmp_path / "acc.yaml"
    f.write_text(text.replace(_line(text, "clock_mhz"), "clock_mhz: .inf"))
    with pytest.raises(APSQError, match="clock_mhz.*finite"):
        load_accelerator(f)


def _line(text: str, key: str) -> str:
    return next(ln for ln in text.splitlines() if ln.strip().startswith(key + ":"))


def test_apsq_config_ints_bounded():
    with pytest.raises(APSQError, match=r"tile must be in \[1, 65536\]"):
        APSQConfig(tile=10**20)
    with pytest.raises(APSQError, match="gs must be in"):
        APSQConfig(gs=10**20)


def test_train_config_floats_finite():
    from apsq.train.config import parse_config

    for key in ("lr", "scale_lr", "weight_decay"):
        with pytest.raises(APSQError, match=f"qat.{key}: Input should be a finite number"):
            parse_config({"qat": {key: math.inf}})
    with pytest.raises(APSQError, match="distill.temperature"):
        parse_config({"distill": {"temperature": math.nan}})


@pytest.mark.parametrize("cfg,match", [
    ({"seed": 10**30}, "seed: Input should be less than or equal to"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"qat": {"batch_size": 10**20}}, "qat.batch_size"),
    ({"finetune": {"steps": 10**20}}, "finetune.steps"),
    ({"model": {"num_labels": 10**20}}, "model.num_labels"),
    ({"threads": 10**6}, "threads"),
    ({"qat": {"lr": 1e300}}, "qat.lr"),
])
def test_train_config_ints_bounded(cfg, match):
    from apsq.train.config import parse_config

    with pytest.raises(APSQError, match=match):
        parse_config(cfg)


# --- 5: user text printed literally -----------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab[]/\\ #@=,nL", max_size=16))
def test_print_error_is_literal(text):
    buf = io.StringIO()
    print_error(APSQError(text), console=Console(file=buf, width=400, color_system=None))
    assert buf.getvalue() == f"error: {text}\n"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab[]/ #@=,nLx_.", max_size=16))
def test_literal_in_markup_strings(text):
    buf = io.StringIO()
    Console(file=buf, width=400, color_system=None).print(f"[red]wrote[/red] {literal(text)} (done)")
    assert buf.getvalue() == f"wrote {text} (done)\n"


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from apsq.cli import app

    return CliRunner().invoke(app, args)


def test_cli_markup_in_user_input(tmp_path):
    r = _cli(["energy", "-m", "[/x]"])
    assert r.exit_code != 0 and "MarkupError" not in repr(r.exception)
    assert "[/x]" in r.output
    evil = "[bold]evil.yaml"
    r = _cli(["energy", "-m", "bert-base", "--accelerator", evil])
    assert r.exit_code != 0 and evil in r.output  # the file name as given, not 'evil.yaml'
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe")
    r = _cli(["energy", "-m", "bert-base", "--accelerator", str(bad)])
    assert r.exit_code != 0 and "is not UTF-8" in r.output and "Traceback" not in r.output


def test_cli_rae_shape_in_error_kept():
    r = _cli(["rae", "simulate", "--steps", "0"])  # refused by the parser's range check, naming the option
    assert r.exit_code != 0 and "'--steps'" in r.output, r.output
    from apsq.hw.rae import simulate

    with pytest.raises(APSQError, match=r"partials must be \[n, L\] with n >= 1"):  # the API's own message
        simulate(np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64), gs=1, lanes=4)


# --- 6: model / data pairing of apsq train ----------------------------------------------------
@pytest.mark.parametrize("cfg,match", [
    ({"model": {"name": "digits-cnn", "num_labels": 2}, "data": {"name": "digits"}},
     "num_labels is 2 but data 'digits' has 10 classes; set model.num_labels: 10"),
    ({"model": {"name": "./no-such-model"}}, "'./no-such-model': no such folder.*minilm, bert-tiny, .*digits-cnn"),
    ({"model": {"name": "minilm", "num_labels": 10}, "data": {"name": "digits"}},
     "takes text but data 'digits' is image; for 'digits' use model.name 'digits-cnn'"),
    ({"model": {"name": "digits-cnn", "num_labels": 2}, "data": {"name": "rt-sentences"}},
     "takes image but data 'rt-sentences' is text"),
    ({"data": {"name": "imagenet"}}, "data.name must be one of rt-sentences, digits, .*glue-cola"),
    ({"model": {"num_labels": 10}}, "num_labels is 10 but data 'rt-sentences' has 2 classes"),
    ({"model": {"name": "bert-tiny", "num_labels": 2}, "data": {"name": "glue-mnli"}}, "has 3 classes"),
    ({"data": {"name": "glue-stsb"}}, "'glue-stsb' is a regression \\(one output\\); set model.num_labels: 1"),
])
def test_pairing_rejected_with_allowed_values(cfg, match):
    from apsq.train.config import parse_config

    with pytest.raises(APSQError, match=match):
        parse_config(cfg)


def test_pairing_accepted_and_local_folder(tmp_path):
    from apsq.train.config import parse_config

    parse_config({"model": {"name": "digits-cnn", "num_labels": 10}, "data": {"name": "digits"}})
    parse_config({"model": {"name": "bert-tiny", "num_labels": 3}, "data": {"name": "glue-mnli"}})
    parse_config({"model": {"name": "bert-base-uncased"}})  # a hub id: checked when loaded
    with pytest.raises(APSQError, match="no config.json"):
        parse_config({"model": {"name": str(tmp_path)}})
    (tmp_path / "config.json").write_text("{}")
    assert parse_config({"model": {"name": str(tmp_path)}}).model.name == str(tmp_path)


def test_config_file_must_name_model_and_data(tmp_path):
    from apsq.train.config import load_config

    p = tmp_path / "t.yaml"
    p.write_text("apsq: {gs: 2}\nqat: {steps: 5}\n")
    with pytest.raises(APSQError, match="must name its model and data.*rt-sentences, digits"):
        load_config(p)
    p.write_text("model: {name: minilm}\napsq: {gs: 2}\n")
    with pytest.raises(APSQError, match="must name its data"):
        load_config(p)


def test_train_cli_refuses_before_any_work(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("model: {name: digits-cnn, num_labels: 2}\ndata: {name: digits}\n")
    out = tmp_path / "run"
    r = _cli(["train", "--config", str(p), "--output", str(out)])
    assert r.exit_code == 1 and "set model.num_labels: 10" in r.output
    assert not out.exists()  # nothing trained, nothing written


def test_layer_names_printed_literally():
    import torch

    import apsq

    m = torch.nn.Sequential()
    m.add_module("[bold]x", torch.nn.Linear(64, 8))
    apsq.quantize_(m, apsq.APSQConfig(tile=32))
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    apsq.calibrate(m, [x])
    with apsq.track_stats(m) as stats:
        m(x)
    buf = io.StringIO()
    apsq.print_layer_stats(stats, Console(file=buf, width=120, color_system=None))
    assert "[bold]x" in buf.getvalue()
