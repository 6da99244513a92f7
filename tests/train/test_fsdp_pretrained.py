"""`apsq train` under FSDP2 with a *pretrained* Hugging Face model (a folder: the user's LLaMA checkpoint,
MiniLM, a hub id). accelerate's FSDP launch sets FSDP_CPU_RAM_EFFICIENT_LOADING=true by default, and
transformers then loads the weights on local rank 0 only, the other ranks' on the meta device, for
accelerate's prepare() to broadcast; apsq shards the model itself, so rank 1 failed at once with
"Cannot copy out of meta tensor". The FSDP tests before built their models from configs (llama-tiny)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_decoder_folder import _save_decoder
from test_train_fsdp import FSDP_ENV, _free_port


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                      FSDP_CPU_RAM_EFFICIENT_LOADING="true", **FSDP_ENV)  # what accelerate launch sets
    torch.set_num_threads(1)
    from apsq.train.config import TrainConfig
    from apsq.train.loop import train

    train(TrainConfig.model_validate(cfg_dict), Path(out), progress=False)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_fsdp2_trains_a_pretrained_folder_model_on_every_rank(tmp_path, standin, make_config):
    folder = _save_decoder(tmp_path / "llama")
    cfg = make_config(standin, model={"name": str(folder), "max_len": 16}, data={"eval_limit": 20},
                      finetune={"steps": 1}, qat={"steps": 1, "calib_batches": 1},
                      apsq={"mode": "apsq", "gs": 2, "tile": 8, "exclude": ["score"]}, distill={"hidden_weight": 0.0})
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path / "run")), nprocs=2, join=True)
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["sharding"] == "fsdp2" and res["processes"] == 2 and res["replica_max_abs_diff"] == 0.0
