"""Config validation and pickle-free atomic checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from apsq.errors import APSQError
from apsq.train.checkpoint import (
    atomic_save_tensors,
    load_model_state,
    optimizer_from_flat,
    optimizer_to_flat,
    read_tensors,
)
from apsq.train.config import load_config, parse_config


def test_unknown_and_bad_keys_named(tmp_path):
    with pytest.raises(APSQError, match="unknown key 'qat.stepz'"):
        parse_config({"qat": {"stepz": 3}})
    with pytest.raises(APSQError, match="unknown key 'optimiser'"):
        parse_config({"optimiser": "adam"})
    with pytest.raises(APSQError, match="gs must be in"):
        parse_config({"apsq": {"mode": "apsq", "gs": 0}})
    with pytest.raises(APSQError, match="unknown APSQ config keys"):
        parse_config({"apsq": {"group_size": 2}})
    with pytest.raises(APSQError, match="finetune.lr"):
        parse_config({"finetune": {"lr": -1}})
    p = tmp_path / "c.yaml"
    p.write_text("qat: [1, 2\n")
    with pytest.raises(APSQError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(APSQError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_validate():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("train_*.yaml"))
    assert files, "configs/train_*.yaml missing"
    for f in files:
        cfg = load_config(f)
        assert cfg.model.name and yaml.safe_load(f.read_text())


def test_fingerprint_tracks_training_fields_only():
    a = parse_config({"apsq": {"gs": 2}})
    assert a.fingerprint() == parse_config({"apsq": {"gs": 2}, "save_every": 7, "threads": 1}).fingerprint()
    assert a.fingerprint() != parse_config({"apsq": {"gs": 3}}).fingerprint()
    assert a.fingerprint() != parse_config({"apsq": {"gs": 2}, "seed": 1}).fingerprint()


def _model_and_opt():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW([{"params": [m[0].weight], "base_lr": 1e-3}, {"params": [m[0].bias, *m[1].parameters()]}],
                            lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    return m, opt


def test_checkpoint_roundtrip_exact(tmp_path):
    m, opt = _model_and_opt()
    ot, ometa = optimizer_to_flat(opt)
    path = tmp_path / "ck.safetensors"
    atomic_save_tensors(path, {**{f"model/{k}": v for k, v in m.state_dict().items()}, **ot},
                        {"step": 3, "optimizer": ometa})
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
    tensors, meta = read_tensors(path)
    assert meta["step"] == 3
    torch.manual_seed(1)
    m2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt2 = torch.optim.AdamW([{"params": [m2[0].weight], "base_lr": 1e-3},
                              {"params": [m2[0].bias, *m2[1].parameters()]}], lr=1e-2)
    load_model_state(m2, tensors, path)
    optimizer_from_flat(opt2, tensors, meta["optimizer"], path)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == [{**g, "betas": tuple(g["betas"])} for g in s2["param_groups"]]
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(torch.as_tensor(s1["state"][i][k]), torch.as_tensor(s2["state"][i][k]))
    # one more identical step on both keeps them identical
    x = torch.randn(5, 4)
    for mm, oo in ((m, opt), (m2, opt2)):
        oo.zero_grad()
        mm(x).square().sum().backward()
        oo.step()
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    # the file is plain safetensors: loadable without pickle
    assert set(load_file(str(path))) == set(tensors)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    m, _opt = _model_and_opt()
    path = tmp_path / "ck.safetensors"
    atomic_save_tensors(path, {f"model/{k}": v for k, v in m.state_dict().items()}, {"step": 1})
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(APSQError, match="corrupt"):
        read_tensors(path)
    assert path.read_bytes() == good[: len(good) // 2]  # reading never rewrites
    path.write_bytes(good)
    tensors, _ = read_tensors(path)
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2))
    with pytest.raises(APSQError, match="does not match the model"):
        load_model_state(other, tensors, path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(APSQError, match="not an apsq checkpoint"):
        read_tensors(tmp_path / "foreign.safetensors")
    with pytest.raises(APSQError, match="parameter groups"):
        optimizer_from_flat(torch.optim.AdamW(m.parameters()), {}, {"param_groups": json.loads("[]")}, path)


def test_checksum_and_legacy_format(tmp_path):
    from safetensors.torch import save_file

    from apsq.train.checkpoint import FORMAT, LEGACY_FORMATS, tensor_digest

    m, _ = _model_and_opt()
    tensors = {f"model/{k}": v for k, v in m.state_dict().items()}
    path = tmp_path / "ck.safetensors"
    atomic_save_tensors(path, tensors, {"step": 2})
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    assert header["format"] == FORMAT and header["sha256"] == tensor_digest(tensors, header["state"])
    # a checkpoint written before checksums existed still loads (nothing to verify)
    old = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(old),
              metadata={"format": LEGACY_FORMATS[0], "state": json.dumps({"step": 1})})
    assert read_tensors(old)[1] == {"step": 1}
    # the checksum covers names, dtypes and shapes, not only bytes
    t2 = dict(tensors)
    t2["model/0.bias"] = t2["model/0.bias"].to(torch.float64)
    assert tensor_digest(t2, header["state"]) != header["sha256"]
    assert tensor_digest(tensors, header["state"] + " ") != header["sha256"]
