"""Step sizes under ``torch.distributed``: the same steps on every rank, sharded or not.

FSDP2 (``torch.distributed.fsdp.fully_shard``) turns parameters into DTensor shards and, inside a
forward, swaps in unsharded copies that it frees at reshard: a step written there is lost while the
layer's ``initialized`` flag (a plain buffer) stays set, so every step silently stays ``2^0``. And a
rank that initialises its steps from its own batch gets other steps than its neighbours (DDP would
train them apart). So under a process group:

* :func:`refuse_lazy_init` -- lazy initialisation inside a forward is an :class:`APSQError` saying to
  call :func:`apsq.calibrate` first;
* :func:`check_same_calibration` -- :func:`apsq.calibrate` is a collective: every rank passes the same
  calibration batches (checked from the content keys of what each layer sampled, an error naming the
  first layer and rank that differ), so every rank computes the steps a single process would;
* :func:`reshard` -- after calibration every FSDP2 module is resharded (the root stays unsharded after
  a forward, and an optimizer built then would hold its transient unsharded parameters);
* :func:`replicate_steps` -- a bf16 / fp16 model's float32 steps stay out of FSDP2 (which wants one
  dtype per unit), replicated, their gradients averaged over the ranks;
* :func:`full_parameters` -- while a layer derives its steps, its DTensor parameters are gathered into
  plain full tensors; afterwards the new step values are written into the shards (rank 0's values,
  scattered, so the ranks cannot drift), before or after ``fully_shard``.

Every rank must call these in the same order (they are collectives), which :func:`apsq.calibrate`
does by visiting the layers in module order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

from apsq.errors import APSQError


def process_group_size() -> int:
    """Ranks in the default process group; 0 when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 0


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DTensor


def is_sharded(t: object) -> TypeGuard[DTensor]:
    """Whether ``t`` is a DTensor (a parameter after ``fully_shard`` or tensor parallelism)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def refuse_lazy_init(layer: str, kind: str) -> None:
    """Raise when a step would be initialised lazily inside a forward under ``torch.distributed``.

    Raises:
        APSQError: a process group is initialised (FSDP2 would drop the step at reshard; other ranks
            would initialise from other batches).
    """
    if process_group_size():
        raise APSQError(
            f"{kind} layer {layer or '?'}: its quantization steps are not initialised, and lazy initialisation "
            "inside a forward is refused under torch.distributed (FSDP2 drops steps written into unsharded "
            "parameters at reshard, and each rank would initialise from its own batch). Call "
            "apsq.calibrate(model, batches) on every rank with the same batches first (before or after "
            "fully_shard)"
        )


def _digest(layer: nn.Module) -> str:
    calib = getattr(layer, "_calib", None)
    h = hashlib.sha256()
    if calib is not None:
        h.update(repr((calib.calls, calib.rows)).encode())
        for key, group in sorted(calib.groups.items()):
            h.update(repr((key, group.offered)).encode())
            if group.keys is not None:
                h.update(group.keys.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def check_same_calibration(layers: Sequence[nn.Module]) -> None:
    """Check that every rank sampled the same calibration data for every layer (no-op without a
    process group).

    Raises:
        APSQError: the first layer whose samples differ between rank 0 and another rank -- raised on
            every rank, before any step is changed.
    """
    world = process_group_size()
    if world <= 1:
        return
    mine = [_digest(m) for m in layers]
    every: list[list[str] | None] = [None] * world
    dist.all_gather_object(every, mine)
    for rank, theirs in enumerate(every):
        if theirs == every[0]:
            continue
        i = next((j for j, (a, b) in enumerate(zip(every[0] or [], theirs or [])) if a != b), 0)  # all filled
        name = getattr(layers[i], "layer_name", "") or type(layers[i]).__name__
        raise APSQError(
            f"calibrate under torch.distributed: rank {rank} saw other calibration data than rank 0 (first at "
            f"layer {name}); pass the same calibration batches on every rank (the steps are then the ones "
            "a single process computes from them)"
        )


def reshard(model: nn.Module) -> None:
    """Reshard every FSDP2 module of ``model`` (no-op without FSDP2). FSDP2 keeps the root's parameters
    unsharded after a forward; an optimizer built after :func:`apsq.calibrate` must see the sharded
    DTensor parameters, not those transient copies."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def replicate_steps(model: nn.Module) -> set[nn.Parameter]:
    """Keep the float32 step parameters out of FSDP2 for a bf16 / fp16 model: returns them, to pass as
    ``fully_shard(..., ignored_params=...)`` on every unit, and registers a hook on each that averages its
    gradient over the ranks once it is accumulated (one ``all_reduce`` per step tensor, in the same order
    on every rank). FSDP2 wants one parameter dtype per unit; the steps stay float32
    (:mod:`apsq.quant.fp32_steps`) and are tiny (1.4 M for LLaMA-2-7B), so they are replicated instead of
    sharded. Call it once; gradient accumulation over micro-batches is not supported with it (the hook
    would average the accumulated gradient again)."""
    world = process_group_size()
    steps: set[nn.Parameter] = set()
    for mod in model.modules():
        for name in _step_names(mod):
            p = mod._parameters.get(name)
            if isinstance(p, nn.Parameter) and p not in steps:
                steps.add(p)
                if world > 1 and p.requires_grad:
                    p.register_post_accumulate_grad_hook(_average_grad)
    return steps


def _average_grad(p: torch.Tensor) -> None:
    grad = p.grad
    if grad is None:  # a post-accumulate-grad hook: the gradient is there
        return
    dist.all_reduce(grad)
    grad.div_(dist.get_world_size())


def mixed_dtypes(model: nn.Module) -> bool:
    """Whether ``model``'s parameters other than the float32 steps are not float32 (then FSDP2 needs the
    steps kept apart: :func:`replicate_steps`)."""
    for mod in model.modules():
        steps = _step_names(mod)
        for name, p in mod.named_parameters(recurse=False):
            if name not in steps and p.is_floating_point() and p.dtype != torch.float32:
                return True
    return False


def _step_names(module: nn.Module) -> set[str]:
    return set(getattr(module, "_float32_steps", ()))


@contextmanager
def full_parameters(layer: nn.Module) -> Iterator[None]:
    """Inside: every DTensor parameter of ``layer`` (and its submodules) replaced by a plain full copy
    (``full_tensor()``, a collective). On exit the step parameters (a module's ``_float32_steps``) are
    written back into their shards -- the values of rank 0, scattered -- and the DTensors restored.
    Without DTensor parameters it does nothing.
    """
    swapped: list[tuple[nn.Module, str, Any]] = []  # DTensor parameters (nn.Parameter and DTensor at once)
    for mod in layer.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and is_sharded(p):
                full = nn.Parameter(cast("DTensor", p.detach()).full_tensor(), requires_grad=p.requires_grad)
                mod._parameters[name] = full
                swapped.append((mod, name, p))
    if not swapped:
        yield
        return
    ok = False
    try:
        yield
        ok = True
    finally:
        from torch.distributed.tensor import distribute_tensor

        for mod, name, sharded in swapped:
            full_p = mod._parameters[name]
            mod._parameters[name] = sharded
            if ok and full_p is not None and name in _step_names(mod):
                new = distribute_tensor(full_p.detach().to(sharded.dtype), sharded.device_mesh, sharded.placements,
                                        src_data_rank=0)
                with torch.no_grad():
                    sharded.to_local().copy_(new.to_local())
