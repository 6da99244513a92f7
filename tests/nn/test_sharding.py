"""Issue 22 item 1: FSDP2-sharded QAT keeps the step sizes (2 gloo ranks on the CPU).

Reported kind: ModelOpt's FSDP2 work (PR #318) -- quantizer state written in place into parameters
that FSDP2 unshards and reshards is lost. Before the fix, steps initialised lazily inside a sharded
forward stayed 2^0 (the loss collapsed, no error) and ``calibrate`` after ``fully_shard`` failed with
raw DTensor errors. Now: calibration gives the same steps before or after ``fully_shard``, a small
LLaMA's sharded QAT ends with the single-process losses and exponents, lazy initialisation under a
process group and ranks with different calibration data are :class:`APSQError`.

Tolerance: the sharded gradient is the average of the two ranks' half-batch means (reduce-scatter),
the single-process one the mean over the whole batch -- the same sum in another float32 order, so
losses agree to a few ulp (measured 5e-7 absolute on losses ~4.6; asserted 1e-5), exponents exactly.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import apsq
from apsq.errors import APSQError

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")
VOCAB, SEQ, STEPS = 96, 12, 3


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    apsq.quantize_(model, apsq.APSQConfig(mode="apsq", gs=2, tile=8, attention_matmuls=True, exclude=("lm_head",),
                                          overrides={"*.mlp.down_proj": {"psum_granularity": "channel"}}))
    return model


def _data() -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, VOCAB, (4, SEQ), generator=g),
            [torch.randint(0, VOCAB, (4, SEQ), generator=g) for _ in range(STEPS)])


def _steps(model: nn.Module) -> dict[str, torch.Tensor]:
    from apsq.nn.sharding import is_sharded

    out = {}
    for n, p in model.named_parameters():
        if n.endswith(("log2_scale", "log2_scales")):
            out[n] = (p.full_tensor() if is_sharded(p) else p).detach().clone()
    return out


def _qat(model: nn.Module, rank: int = 0, world: int = 1) -> list[float]:
    """``STEPS`` steps of the library's optimizer rule; rank r takes rows r::world of each global batch."""
    from apsq.train.config import ScheduleConfig
    from apsq.train.optim import clip_grad_norms_, make_optimizer

    opt = make_optimizer(model, ScheduleConfig(lr=1e-3, scale_lr=0.2, steps=STEPS))
    losses = []
    for ids in _data()[1]:
        local = ids[rank::world]
        loss = model(input_ids=local, labels=local).loss
        opt.zero_grad()
        loss.backward()
        clip_grad_norms_(opt.param_groups)
        opt.step()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        losses.append(float(total) / world)
    return losses


def _shard(model: nn.Module, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _bf16_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    apsq.quantize_(m, apsq.APSQConfig(tile=8))
    m.to(torch.bfloat16)  # the steps stay float32: FSDP2 wants one dtype per unit -> replicate_steps
    return m, torch.randn(8, 16, generator=torch.Generator().manual_seed(3))


def _bf16_qat(m: nn.Module, x: torch.Tensor, rank: int = 0, world: int = 1) -> list[float]:
    """3 steps on the mean of per-rank half-batch losses (one process: both halves, averaged)."""
    from apsq.train.config import ScheduleConfig
    from apsq.train.optim import make_optimizer

    apsq.calibrate(m, [x])
    opt = make_optimizer(m, ScheduleConfig(lr=1e-3, scale_lr=0.2))
    losses = []
    for _ in range(3):
        parts = [m(x.bfloat16()[r::2]).float().pow(2).mean() for r in ((rank,) if world > 1 else (0, 1))]
        loss = sum(parts) / len(parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        losses.append(float(total) / world)
    return losses


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        res: dict = {}
        calib = _data()[0]
        # lazy initialisation inside a (sharded or not) forward under a process group: refused
        lazy = nn.Sequential(nn.Linear(16, 8))
        apsq.quantize_(lazy, apsq.APSQConfig(tile=8))
        try:
            lazy(torch.randn(2, 16))
        except APSQError as e:
            res["lazy_error"] = str(e)
        # calibrate before fully_shard == after
        before = _llama()
        apsq.calibrate(before, [{"input_ids": calib}])
        _shard(before, world)
        res["before"] = _steps(before)
        model = _llama()
        _shard(model, world)
        # ranks with different calibration data: refused on every rank, nothing changed
        try:
            apsq.calibrate(model, [{"input_ids": (calib + rank) % VOCAB}])
        except APSQError as e:
            res["calib_error"] = str(e)
        res["untouched"] = all(float(t.abs().sum()) == 0 for t in _steps(model).values())
        apsq.calibrate(model, [{"input_ids": calib}])
        res["after"] = _steps(model)
        res["losses"] = _qat(model, rank, world)
        res["trained"] = _steps(model)
        # a bf16 model: float32 steps kept out of FSDP2 (replicated, gradients averaged)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from apsq.nn.sharding import replicate_steps

        mlp, x = _bf16_mlp()
        keep = replicate_steps(mlp)
        mesh = init_device_mesh("cpu", (world,))
        fully_shard(mlp[0], mesh=mesh, ignored_params=keep)
        fully_shard(mlp, mesh=mesh, ignored_params=keep)
        res["bf16_losses"] = _bf16_qat(mlp, x, rank, world)
        res["bf16_params"] = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                              for n, p in mlp.named_parameters()}
        if rank == 0:
            torch.save(res, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(d / "store"), str(d / "out.pt")), nprocs=2, join=True)
    return torch.load(d / "out.pt")


@pytest.fixture(scope="module")
def single():
    model = _llama()
    apsq.calibrate(model, [{"input_ids": _data()[0]}])
    calibrated = _steps(model)
    return calibrated, _qat(model), _steps(model)


@pytest.mark.slow
def test_sharded_calibration_equals_single_process(sharded, single):
    calibrated, _, _ = single
    assert sharded["before"].keys() == calibrated.keys() and len(calibrated) > 20
    for n, t in calibrated.items():
        assert torch.equal(sharded["before"][n], t), n
        assert torch.equal(sharded["after"][n], t), n
    assert any(float(t.abs().sum()) > 0 for t in calibrated.values())  # not the 2^0 default


@pytest.mark.slow
def test_sharded_qat_equals_single_process(sharded, single):
    calibrated, losses, trained = single
    assert sharded["losses"] == pytest.approx(losses, abs=1e-5)
    moved = 0
    for n, t in trained.items():
        assert torch.equal(torch.floor(sharded["trained"][n] + 0.5), torch.floor(t + 0.5)), n
        moved += int((sharded["trained"][n] != calibrated[n]).sum())
    assert moved > 0  # the steps did train


@pytest.mark.slow
def test_bf16_model_with_float32_steps_shards_and_equals_single_process(sharded):
    mlp, x = _bf16_mlp()
    losses = _bf16_qat(mlp, x)
    assert sharded["bf16_losses"] == losses  # bit for bit (measured)
    for n, p in mlp.named_parameters():
        assert p.dtype == sharded["bf16_params"][n].dtype and torch.equal(p.detach(), sharded["bf16_params"][n]), n
    assert sum(n.endswith(("log2_scale", "log2_scales")) for n, _ in mlp.named_parameters()) == 6


@pytest.mark.slow
def test_lazy_init_and_different_calibration_data_are_refused(sharded):
    assert "lazy initialisation" in sharded["lazy_error"] and "apsq.calibrate" in sharded["lazy_error"]
    assert "rank 1" in sharded["calib_error"] and "same calibration batches" in sharded["calib_error"]
    assert sharded["untouched"]


def test_lazy_init_without_process_group_still_works():
    m = nn.Sequential(nn.Linear(16, 8))
    apsq.quantize_(m, apsq.APSQConfig(tile=8))
    m(torch.randn(4, 16))
    assert not m[0].needs_init()
