"""FSDP2 for ``apsq train``: when to shard, how, and full (gathered) tensors for checkpoints.

``accelerate launch --use_fsdp --fsdp_version 2`` (or an accelerate config file with
``distributed_type: FSDP``, ``fsdp_version: 2``) asks for sharded training. Accelerate itself turns that
request into DDP on CPU processes, silently, and its own ``prepare`` would shard before the quantizers
are calibrated. So ``apsq train`` reads the request (:func:`fsdp_requested`) and shards itself with
``torch.distributed.fsdp.fully_shard`` (:func:`shard`), on CPU (gloo) and GPU alike, in the order that
keeps the steps (ModelOpt PR #318's lesson): build the plain model, load its state, ``quantize_``,
``calibrate``, then shard; the teacher is built from the state dict, not copied.

Checkpoints hold *full* tensors (:func:`full_state`, :func:`full_value`, gathered on every rank), in the
same layout as a single-process run: a sharded run's checkpoint loads into one process, and a run
resumes on any number of ranks (:func:`shard_like` cuts full optimizer state back into shards).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from apsq.errors import APSQError
from apsq.nn.sharding import is_sharded


def fsdp_requested(world: int, mixed_precision: str = "no") -> bool:
    """Whether the launcher asked for FSDP (``ACCELERATE_USE_FSDP``); only FSDP2 on 2+ processes
    without mixed precision is accepted.

    Raises:
        APSQError: FSDP version other than 2 (``FSDP_VERSION``), one process, or mixed precision -- before
            anything is built or written.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise APSQError(f"FSDP version {version} was requested (--fsdp_version / fsdp_version); apsq train shards with "
                        "FSDP2 only: pass --fsdp_version 2 (FSDP1's flat parameters would hold the step sizes in "
                        "views it rewrites)")
    if world < 2:
        # not --multi_gpu: accelerate launch refuses it beside --use_fsdp ("only one of ... at a time")
        raise APSQError("FSDP2 was requested with 1 process; pass --num_machines 1 --num_processes N (N >= 2; on a "
                        "CPU machine accelerate then starts N gloo processes) or drop --use_fsdp")
    if mixed_precision not in ("no", "", None):
        raise APSQError(f"mixed precision {mixed_precision!r} with FSDP2 is not supported by apsq train (FSDP2 would cast "
                        "the float32 step parameters); pass --mixed_precision no")
    return True


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``model`` (the members of its longest ``nn.ModuleList``: transformer
    layers), each its own FSDP2 unit."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return []
    longest: nn.ModuleList = max(lists, key=len)
    return list(longest)


def shard(model: nn.Module) -> nn.Module:
    """``fully_shard`` every block (:func:`blocks`) and then the root over all ranks (1-D mesh on the
    model's device type); returns ``model``, whose parameters are now DTensor shards (the float32 step
    parameters of a model with other weights stay replicated: :func:`apsq.nn.sharding.replicate_steps`)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from apsq.nn.sharding import mixed_dtypes, replicate_steps

    dev = next(model.parameters()).device
    mesh = init_device_mesh(dev.type, (dist.get_world_size(),))
    keep = replicate_steps(model) if mixed_dtypes(model) else None  # bf16 weights, float32 steps
    for b in blocks(model):
        fully_shard(b, mesh=mesh, ignored_params=keep)
    fully_shard(model, mesh=mesh, ignored_params=keep)
    return model


def full_value(t: Any) -> Any:
    """A DTensor's full tensor (a collective: every rank calls it in the same order); anything else as is."""
    return t.full_tensor() if isinstance(t, torch.Tensor) and is_sharded(t) else t


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every sharded tensor gathered (same keys as the unsharded model)."""
    return {k: full_value(v) for k, v in model.state_dict().items()}


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` (full, the shape of ``param``) cut like the DTensor ``param`` (this rank's shard, no
    communication); other values unchanged."""
    if not is_sharded(param) or not isinstance(value, torch.Tensor) or value.shape != param.shape:
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
