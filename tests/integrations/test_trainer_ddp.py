"""`APSQTrainer` on several processes (`torchrun` / `accelerate launch`, DDP over gloo here): each rank's
data loader yields its own share of the batches, so calibrating on "the first training batches" gave every
rank other data and `apsq.calibrate` (a collective that checks it) refused the run before its first step.
Now every rank's first batches are gathered in step order and each rank calibrates on that same list: the
steps equal one process calibrating on those batches, and after training all ranks hold the same steps."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _bert():
    import transformers

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def _rows(n: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 60, (n, 10), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(10, dtype=torch.long),
             "labels": (ids[i, 0] > 30).long()} for i in range(n)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import transformers

    import apsq
    from apsq.integrations.transformers import APSQTrainer

    model = apsq.quantize_(_bert(), apsq.APSQConfig(gs=2, tile=8, exclude=("classifier",)))
    fresh = copy.deepcopy(model)
    seen: list[dict[str, torch.Tensor]] = []
    calibrated: dict[str, torch.Tensor] = {}
    real = apsq.integrations.transformers.calibrate

    def spy(m, batches, *a, **kw):
        seen.extend(batches)
        out = real(m, batches, *a, **kw)
        calibrated.update({n: p.detach().clone() for n, p in m.named_parameters()
                           if n.endswith(("log2_scale", "log2_scales"))})
        return out

    apsq.integrations.transformers.calibrate = spy
    args = transformers.TrainingArguments(output_dir=out, per_device_train_batch_size=2, max_steps=2, use_cpu=True,
                                          report_to=[], save_strategy="no", logging_strategy="no", seed=0,
                                          ddp_backend="gloo", disable_tqdm=True)
    APSQTrainer(model=model, args=args, train_dataset=_rows(), calibration_batches=2).train()
    steps = {n: p.detach() for n, p in model.named_parameters() if n.endswith(("log2_scale", "log2_scales"))}
    everyone: list = [None] * world
    dist.all_gather_object(everyone, (steps, seen, calibrated))
    if rank == 0:
        torch.save({"everyone": everyone, "fresh": fresh}, os.path.join(out, "result.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_apsq_trainer_calibrates_and_trains_on_two_processes(tmp_path):
    import apsq

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    res = torch.load(tmp_path / "result.pt", weights_only=False)
    (steps0, seen0, cal0), (steps1, seen1, cal1) = res["everyone"]
    assert len(seen0) == 4  # 2 calibration batches x 2 ranks, the same list on both ranks
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(seen0, seen1))
    assert not torch.equal(seen0[0]["input_ids"], seen0[1]["input_ids"])  # step 1 of rank 0, then of rank 1
    assert steps0.keys() == steps1.keys() and all(torch.equal(steps0[k], steps1[k]) for k in steps0)
    one = res["fresh"]  # one process calibrating on the gathered batches
    apsq.calibrate(one, seen0)
    calibrated = {n: p for n, p in one.named_parameters() if n.endswith(("log2_scale", "log2_scales"))}
    assert cal0.keys() == calibrated.keys()
    assert all(torch.equal(calibrated[k], cal0[k]) and torch.equal(calibrated[k], cal1[k]) for k in cal0)
    assert any(not torch.equal(cal0[k], steps0[k]) for k in cal0)  # and then they trained
