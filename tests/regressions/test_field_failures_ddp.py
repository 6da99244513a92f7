"""Issue 15 item 6: DistributedDataParallel (gloo, 2 CPU processes, find_unused_parameters=False)
trains a quantized model for a few steps in every mode -- no parameter the forward never uses."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import apsq

MODES = ("none", "psq", "apsq")


def _model(mode: str) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    apsq.quantize_(m, apsq.APSQConfig(mode=mode, tile=8))
    apsq.calibrate(m, [torch.randn(32, 16, generator=torch.Generator().manual_seed(1))])
    return m


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for mode in MODES:
            model = nn.parallel.DistributedDataParallel(_model(mode), find_unused_parameters=False)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            g = torch.Generator().manual_seed(10 + rank)
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(8, 16, generator=g)).pow(2).mean().backward()
                opt.step()
            results[mode] = torch.cat([p.detach().reshape(-1) for p in model.module.parameters()])
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_mode_none_has_no_unused_parameter():
    for mode in MODES:
        m = _model(mode)
        x = torch.randn(4, 16)
        m(x).sum().backward()
        unused = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert unused == [], (mode, unused)
    m = _model("none")
    assert "0.psum.log2_scales" in m.state_dict()  # still saved and loaded under the same key


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_ddp_gloo_two_processes_every_mode(tmp_path):
    store, out = str(tmp_path / "store"), str(tmp_path / "params")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, store, out), nprocs=2, join=True)
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    for mode in MODES:  # gradients were all-reduced: both replicas hold the same trained weights
        assert torch.equal(r0[mode], r1[mode]), mode
        assert not torch.equal(r0[mode], torch.cat([p.detach().reshape(-1) for p in _model(mode).parameters()]))
