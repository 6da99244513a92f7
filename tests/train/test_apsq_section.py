"""``TrainConfig.apsq`` is a typed, frozen section (:class:`apsq.train.config.APSQSection`) with the library
config's fields, defaults and rules (issue 27, item 4): one rule in one place, variants built by a validated
helper, every shipped YAML still loading, fingerprints of earlier run folders unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from apsq.config import GS_MAX, APSQConfig
from apsq.errors import APSQError
from apsq.train.config import APSQSection, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = {"accelerate_fsdp2.yaml"}
"""configs/ files in accelerate's format (``accelerate launch --config_file``)."""
APSQ_ONLY = {"tune_minilm_gs_is.yaml"}
"""configs/ files holding an APSQConfig alone (``apsq tune-gs --out-yaml``): an ``apsq:`` section's content."""


def test_fields_and_defaults_are_the_library_config():
    lib = dataclasses.fields(APSQConfig)
    assert list(APSQSection.model_fields) == [f.name for f in lib]
    empty = APSQSection()
    for f in lib:
        assert getattr(empty, f.name) == getattr(APSQConfig(), f.name), f.name
    assert empty.to_apsq_config() == APSQConfig()


@pytest.mark.parametrize("section, match", [
    ({"gs": 0}, rf"gs must be in \[1, {GS_MAX}\], got 0"),
    ({"gs": GS_MAX + 1}, rf"gs must be in \[1, {GS_MAX}\]"),
    ({"mode": "apsqq"}, "mode must be one of 'none', 'psq', 'apsq'; got 'apsqq'"),
    ({"psum_granularity": "row"}, "psum_granularity must be one of 'tensor', 'channel'"),
    ({"layer_types": ["lstm"]}, "layer_types entries must be among 'linear', 'conv1d', 'conv2d'"),
    ({"psum_bits": 1}, r"psum_bits must be in \[2, 16\]"),
    ({"gs": True}, "gs must be an integer, got True"),
    ({"tile": "32"}, "tile must be an integer, got '32'"),
    ({"attention_matmuls": "yes"}, "attention_matmuls must be true or false"),
    ({"acc_bits": 12}, "applies to mode 'none' only"),
    ({"group_size": 2}, r"unknown APSQ config keys \['group_size'\]; allowed: tile, mode, gs"),
    ({"overrides": {"*.fc": {"gz": 1}}}, r"overrides\['\*.fc'\] has unknown keys \['gz'\]"),
    ([2], "apsq: must be a mapping of apsq.APSQConfig fields"),
    (True, r"apsq: expected a mapping \(the APSQSection fields\), got the boolean True"),
])
def test_bad_values_name_field_allowed_values_and_file(tmp_path, section, match):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"model": {"name": "digits-cnn", "num_labels": 10}, "data": {"name": "digits"},
                                 "apsq": section}))
    with pytest.raises(APSQError, match=match) as err:
        load_config(p)
    assert str(err.value).startswith(f"{p}: invalid training config: apsq: ")
    if isinstance(section, dict):
        with pytest.raises(APSQError, match=match):  # the same rule, where the library applies it
            APSQConfig.from_dict(section)


def test_valid_values_reach_quantize_config():
    given = {"mode": "none", "gs": 1, "acc_bits": 16, "tile": 8, "exclude": "classifier", "layer_types": ["linear"],
             "overrides": {"*.fc2": {"enabled": False}}, "psum_granularity": "channel", "attention_matmuls": True}
    cfg = parse_config({"apsq": given})
    assert cfg.apsq is not None and cfg.apsq.exclude == ("classifier",) and cfg.apsq.acc_bits == 16
    assert cfg.apsq_config() == APSQConfig.from_dict(given)
    assert parse_config({"apsq": {"gs": GS_MAX}}).apsq_config() == APSQConfig(gs=GS_MAX)
    assert parse_config({}).apsq is None and parse_config({"apsq": None}).apsq_config() is None


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_yaml_loads(name):
    path = ROOT / "configs" / name
    if name in ACCELERATE:
        assert "distributed_type" in yaml.safe_load(path.read_text())
        return
    if name in APSQ_ONLY:
        lib = APSQConfig.from_yaml(path)
        assert APSQSection.model_validate(yaml.safe_load(path.read_text())).to_apsq_config() == lib
        return
    cfg = load_config(path)
    assert parse_config(cfg.model_dump(mode="json")) == cfg  # the dump is a config again
    raw = yaml.safe_load(path.read_text()).get("apsq")
    if raw is not None:
        assert cfg.apsq_config() == APSQConfig.from_dict(raw)


def test_paper_configs_load():
    from apsq.eval.glue_study import load_glue_study, task_configs
    from apsq.eval.zero_shot import load_zero_shot_config

    study = load_glue_study(ROOT / "configs/paper/bert_base_glue.yaml")
    assert all(c.apsq is not None for c in task_configs(study).values())
    assert load_zero_shot_config(ROOT / "configs/paper/llama2_7b_zero_shot.yaml").model == "meta-llama/Llama-2-7b-hf"


def test_variant_keeps_every_other_field():
    base = load_config(ROOT / "configs/train_minilm_apsq_gs2.yaml")
    v = base.with_apsq(mode="psq", gs=1)
    assert v.model_dump(exclude={"apsq"}) == base.model_dump(exclude={"apsq"})
    assert v.apsq is not None and base.apsq is not None
    assert (v.apsq.mode, v.apsq.gs, base.apsq.mode, base.apsq.gs) == ("psq", 1, "apsq", 2)
    assert v.apsq.model_dump() == {**base.apsq.model_dump(), "mode": "psq", "gs": 1}
    assert v.fingerprint() != base.fingerprint()
    assert v.with_apsq(mode="apsq", gs=2).fingerprint() == base.fingerprint()
    assert base.apsq.model_copy(update={"gs": 3}) == base.apsq.variant(gs=3)
    fresh = parse_config({}).with_apsq(gs=3)  # no section yet: one from the changes alone
    assert fresh.apsq is not None and fresh.apsq.model_dump() == {"gs": 3}


def test_frozen_and_copies_validated():
    cfg = parse_config({"apsq": {"gs": 2}})
    assert cfg.apsq is not None
    with pytest.raises(ValidationError, match="frozen"):
        cfg.apsq.gs = 3
    with pytest.raises(APSQError, match=r"apsq: gs must be in \[1, 65536\], got 0"):
        cfg.with_apsq(gs=0)
    with pytest.raises(APSQError, match="gs must be in"):
        cfg.apsq.model_copy(update={"gs": 0})
    with pytest.raises(APSQError, match="TrainConfig copy: invalid training config: apsq: mode must be one of"):
        cfg.model_copy(update={"apsq": {"mode": "int4"}})
    with pytest.raises(APSQError, match="qat.lr"):
        cfg.model_copy(update={"qat": {"lr": -1.0}})
    assert cfg.model_copy(update={"apsq": None}).apsq is None


def test_only_given_keys_are_serialized_and_fingerprints_are_unchanged():
    """Run folders written before the section was typed keep resuming: the same keys are dumped (into
    ``config.json`` and the checkpoint's state) and the fingerprints are the ones the dict gave
    (values computed at the commit before, eb98b90)."""
    cfg = parse_config({"apsq": {"gs": 2, "exclude": "classifier", "overrides": {"*.fc": {"gs": 1}}}})
    assert cfg.model_dump(mode="json")["apsq"] == {"gs": 2, "exclude": ["classifier"], "overrides": {"*.fc": {"gs": 1}}}
    assert cfg.fingerprint() == "ce5cc6ab409fa34e"
    assert parse_config({"apsq": {}}).fingerprint() == "2b028d707ffe373f"
    assert parse_config({}).fingerprint() == "022f055e2628d964"
    # a key added later (issue 24: data.validation_from_train) changes nothing at its default
    assert "validation_from_train" not in parse_config({}).weights_dump()["data"]
    glue = {"model": {"name": "minilm"}, "data": {"name": "glue-rte"}}
    assert parse_config({**glue, "data": {**glue["data"], "validation_from_train": False}}).fingerprint() == \
        parse_config(glue).fingerprint() != parse_config({**glue, "data": {**glue["data"],
                                                                           "validation_from_train": True}}).fingerprint()
    assert APSQSection.model_validate(APSQConfig(gs=3)).model_dump()["gs"] == 3  # a library config: every key


def test_without_returns_keys_to_the_library_defaults():
    s = APSQSection.model_validate({"mode": "psq", "gs": 3, "tile": 16, "overrides": {"fc": {"gs": 1}}})
    w = s.without("mode", "gs", "overrides")
    assert w.model_dump() == {"tile": 16}
    assert (w.mode, w.gs, w.overrides) == (APSQConfig().mode, APSQConfig().gs, {})
    assert s.gs == 3  # the original is unchanged
    with pytest.raises(APSQError, match=r"apsq: unknown keys \['group_size'\]; allowed: tile, mode, gs"):
        s.without("group_size")
