"""Issue 22 item 1: ``apsq train`` sharded with FSDP2 (2 gloo ranks on the CPU).

What users hit (accelerate, ModelOpt PR #318): ``accelerate launch --use_fsdp --fsdp_version 2`` ran DDP on
CPU processes without a word; under FSDP the teacher's ``deepcopy``, calibration and the safetensors
checkpoint failed. Now ``apsq train`` shards itself after quantize_ + calibrate, builds the teacher from
the state dict, and checkpoints full tensors: the sharded run equals the DDP run bit for bit (same
batches per rank), a run cut after a QAT step resumes bit-identically, and its checkpoint loads into one
process. Against DDP on the same config the tensors agree to 1e-6 (reduce-scatter vs all-reduce: the
same sums in another order; bit for bit on configs/train_llama_fsdp2.yaml's tiny twin). Against a
single-process run they differ as DDP's do: each rank pads its own half batch, and LSQ's gradient
scale counts the padded positions.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from apsq.errors import APSQError
from apsq.train.sharded import fsdp_requested

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


def _config(standin: Path, make_config) -> dict:
    return make_config(standin, model={"name": "llama-tiny", "max_len": 16, "hidden_size": 32, "num_layers": 2},
                       data={"eval_limit": 21}, finetune={"steps": 1}, qat={"steps": 3, "calib_batches": 1},
                       apsq={"mode": "apsq", "gs": 2, "tile": 8, "attention_matmuls": True, "exclude": ["score"]},
                       distill={"hidden_weight": 0.0}, save_every=1)


class _Cut(Exception):
    pass


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from apsq.train.config import TrainConfig
    from apsq.train.loop import train

    cfg = TrainConfig.model_validate(cfg_dict)
    os.environ.update(FSDP_ENV)
    train(cfg, Path(out) / "fsdp", progress=False)

    def cut(stage: str, step: int) -> None:
        if (stage, step) == ("qat", 2):
            raise _Cut

    try:
        train(cfg, Path(out) / "cut", progress=False, on_step=cut)
    except _Cut:
        pass
    train(cfg, Path(out) / "cut", resume=True, progress=False)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_fsdp2_train_resumes_bit_identically_and_loads_into_one_process(tmp_path, standin, make_config):
    import json

    from apsq.train.checkpoint import read_tensors

    cfg = _config(standin, make_config)
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    ck = {k: read_tensors(tmp_path / k / "checkpoint.safetensors")[0] for k in ("fsdp", "cut")}
    res = {k: json.loads((tmp_path / k / "result.json").read_text()) for k in ("fsdp", "cut")}
    assert res["fsdp"]["sharding"] == "fsdp2" and res["fsdp"]["processes"] == 2
    assert any(k.startswith("optim/") for k in ck["fsdp"])  # gathered optimizer state, single-process layout
    # resumed after QAT step 2 == uninterrupted: every tensor (model, steps, optimizer state), bit for bit
    assert ck["cut"].keys() == ck["fsdp"].keys()
    bad = [k for k in ck["fsdp"] if not torch.equal(ck["fsdp"][k], ck["cut"][k])]
    assert bad == [], bad[:5]
    assert res["cut"]["accuracy"] == res["fsdp"]["accuracy"]
    assert (tmp_path / "cut" / "metrics.jsonl").read_text().count('"stage": "qat", "step": 3, "lr"') == 1
    assert res["fsdp"]["replica_max_abs_diff"] == 0.0
    assert res["fsdp"].get("hf_export") == "hf" and (tmp_path / "fsdp" / "hf" / "config.json").is_file()
    # the sharded run's checkpoint loads into one process and scores what the run reported
    import apsq
    from apsq.train.checkpoint import load_model_state
    from apsq.train.config import TrainConfig
    from apsq.train.evaluation import evaluate
    from apsq.train.models import build_model, load_tokenizer
    from apsq.train.tasks import build_task

    tc = TrainConfig.model_validate(cfg)
    model = build_model(tc)
    apsq.quantize_(model, tc.apsq_config())
    load_model_state(model, ck["fsdp"], tmp_path / "fsdp" / "checkpoint.safetensors")
    task = build_task(tc, load_tokenizer(tc))
    assert evaluate(model, task.eval, progress=False) == res["fsdp"]["accuracy"]


@pytest.mark.parametrize("env, world, mp_, msg", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, 2, "no", "FSDP2 only"),
    ({"ACCELERATE_USE_FSDP": "true"}, 2, "no", "FSDP2 only"),  # accelerate's default version is 1
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, 1, "no", "--num_processes"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, 2, "bf16", "mixed precision"),
])
def test_fsdp_requests_apsq_cannot_honour_are_refused(monkeypatch, env, world, mp_, msg):
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(APSQError, match=msg) as err:
        fsdp_requested(world, mp_)
    # the advice must be a launch accelerate accepts: it refuses --multi_gpu beside --use_fsdp
    assert "--multi_gpu" not in str(err.value)


def test_no_fsdp_request_and_fsdp2_request(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert fsdp_requested(2) is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert fsdp_requested(2) is True
