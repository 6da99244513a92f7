"""Atomic, checksummed, pickle-free checkpoints: tensors in one safetensors file, everything else as JSON.

A checkpoint is a single ``.safetensors`` file written by safetensors to a unique temporary name in
the same folder, fsynced and moved over the old one with :func:`os.replace` (then the
folder is fsynced): a crash or a full disk leaves the previous checkpoint intact, and a failed
write says so (:func:`apsq.data.fileio.atomic_write_with`). Tensors: ``model/<name>`` (the state
dict) and ``optim/<param index>/<key>`` (optimizer state). The JSON ``state`` (step, stage, config
fingerprint, optimizer hyper-parameters and non-tensor state) is stored in the safetensors header
metadata, beside ``sha256``: a digest of every tensor's name, dtype, shape and bytes and of the state
(:func:`tensor_digest`). :func:`read_tensors` recomputes it and refuses a damaged file by name.
Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from apsq.data.fileio import atomic_write_text as _atomic_write_text
from apsq.data.fileio import atomic_write_with
from apsq.errors import APSQError
from apsq.train.sharded import full_value, shard_like

FORMAT = "apsq-checkpoint-v2"
"""v2: the header holds ``sha256`` (:func:`tensor_digest`), verified on every load."""
LEGACY_FORMATS = ("apsq-checkpoint-v1",)
"""Read without a checksum (written before checksums existed)."""


def tensor_digest(tensors: dict[str, torch.Tensor], state: str) -> str:
    """SHA-256 (hex) over the sorted tensor names with their dtype, shape and raw bytes, then ``state``.

    Independent of the file layout, so it is recomputed from the loaded tensors: one flipped bit in
    the data, a changed shape or dtype, or an edited state changes it.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # type: ignore[arg-type]  # numpy types ndarray as a Buffer only for Python >= 3.12
    h.update(state.encode())
    return h.hexdigest()


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` (+ JSON ``meta`` and its checksum in the header) to ``path`` atomically and durably.

    A failed write (disk full, ...) raises :class:`APSQError` saying the previous file is intact.
    """
    path = Path(path)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    state = json.dumps(meta or {})
    header = {"format": FORMAT, "state": state, "sha256": tensor_digest(flat, state)}
    atomic_write_with(path, lambda tmp: save_file(flat, str(tmp), metadata=header), what="checkpoint",
                      errors=(SafetensorError,))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically and durably (see :func:`apsq.data.fileio.atomic_write_bytes`)."""
    _atomic_write_text(path, text)


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a file written by :func:`atomic_save_tensors`; clear error if corrupt."""
    path = Path(path)
    if not path.is_file():
        raise APSQError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise APSQError(f"checkpoint {path} is corrupt or not a safetensors file ({exc}); "
                        "delete it or point --output elsewhere") from exc
    if header.get("format") not in (FORMAT, *LEGACY_FORMATS):
        raise APSQError(f"checkpoint {path} is not an apsq checkpoint (format {header.get('format')!r}, "
                        f"expected {FORMAT!r})")
    if header.get("format") == FORMAT:
        stored = header.get("sha256")
        if stored is None or tensor_digest(tensors, header.get("state", "")) != stored:
            raise APSQError(f"checkpoint {path} is damaged: its contents do not match the SHA-256 checksum stored "
                            "when it was written (a flipped byte on disk or in transfer); refusing to load it. "
                            "Restore the file from a copy, or start again without it")
    try:
        meta = json.loads(header.get("state", "{}"))
    except json.JSONDecodeError as exc:
        raise APSQError(f"checkpoint {path} has a corrupt JSON state ({exc})") from exc
    return tensors, meta


def checkpoint_position(path: Path) -> tuple[str, int] | None:
    """``(stage, step)`` recorded in the checkpoint at ``path``, read from its header only (no tensors are
    loaded or verified: :func:`read_tensors` does that on resume); ``None`` when there is no readable one.
    For messages such as "interrupted: the checkpoint holds qat step 120"."""
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads((f.metadata() or {}).get("state", "{}"))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    stage, step = state.get("stage"), state.get("step")
    return (stage, step) if isinstance(stage, str) and isinstance(step, int) else None


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (``optim/<i>/<key>``) and JSON-able rest.

    Sharded (FSDP2) state is gathered into full tensors (a collective: every rank calls this), so the
    result is the same as a single-process run's."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sorted(sd["state"].items()):
        for key, val in sorted(st.items()):
            if isinstance(val, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = full_value(val)
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                        source: Path) -> None:
    """Restore what :func:`optimizer_to_flat` split (validates the parameter layout); full state is cut
    into shards for an optimizer over FSDP2 (DTensor) parameters."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim/"):
            _, pos, key = name.split("/", 2)
            state.setdefault(int(pos), {})[key] = t
    for pos, vals in meta.get("scalars", {}).items():
        state.setdefault(int(pos), {}).update(vals)
    groups = meta.get("param_groups")
    mine = opt.state_dict()["param_groups"]
    if not isinstance(groups, list) or [len(g["params"]) for g in groups] != [len(g["params"]) for g in mine]:
        raise APSQError(f"checkpoint {source}: optimizer parameter groups do not match this model "
                        "(a different model or config wrote it)")
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    params = [p for g in opt.param_groups for p in g["params"]]
    for idx, vals in state.items():
        if idx < len(params):
            for key, val in vals.items():
                vals[key] = shard_like(val, params[idx])
    opt.load_state_dict({"state": state, "param_groups": groups})


def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path,
                     prefix: str = "model/") -> None:
    """Load ``prefix``-ed tensors into ``model`` strictly; a clear error names missing / extra keys."""
    sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    # a layer's settings record (``_extra_state``) is compared by the layer itself (an APSQError naming the fields)
    bad_shape = sorted(k for k in set(own) & set(sd)
                       if not k.endswith("_extra_state") and own[k].shape != sd[k].shape)
    if missing or extra or bad_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", bad_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[:3]})")
        raise APSQError(f"checkpoint {source} does not match the model: " + ", ".join(parts))
    model.load_state_dict(sd, strict=True)
