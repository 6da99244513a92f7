"""Many inputs through a program: the inputs of an ``apsq train`` export, batched, with a JSON summary.

:func:`input_batches` reads ``eval`` (the run's evaluation split, with labels) or a text file (one
sentence per line) and tokenizes them as training did; :func:`run_batches` runs them through
:func:`apsq.deploy.run` batch by batch and summarises: predictions and logits identical to the PyTorch
model's, accuracy, per-layer totals and the throughput (sentences/min, RTL lane-steps/s). The
summary counts ``sentences`` for a text model and ``images`` for an image model (``input_kind`` says which:
``<kind>``, ``<kind>_checked_layer_by_layer``, ``<kind>_per_min``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from apsq.deploy.activity import LayerActivity, energy_side_by_side
from apsq.deploy.program import EngineLayer, Program, manifest_digest
from apsq.deploy.runner import host_model, outputs_of, run
from apsq.errors import APSQError, check_int
from apsq.machine import describe

__all__ = ["input_batches", "run_batches"]


def input_batches(train_config: Mapping[str, Any] | None, source: str, *, limit: int | None = None,
                  batch_size: int = 32) -> tuple[int, Iterator[dict[str, torch.Tensor]]]:
    """``(count, batches)`` for the model of an ``apsq train`` config: ``source`` is ``eval`` (the
    run's evaluation split, first ``limit`` in order) or, for a text model, a UTF-8 text file with one
    sentence per line. Batches hold ``labels`` when known; sentences are batched in order of length (less
    padding), images (the digits CNN's ``pixel_values``) in order.

    Raises:
        APSQError: a model that is neither a text model nor an image classifier (segmentation: use the
            Python API), a text file for an image model, a missing or empty file."""
    from apsq.train.config import parse_config

    check_int("batch_size", batch_size, lo=1)
    if limit is not None:
        check_int("limit", limit, lo=1)
    if train_config is None:
        raise APSQError("this program was exported from a Python model: run it with apsq.deploy.run(program, "
                        "inputs, model=...)")
    cfg = parse_config(dict(train_config), "program host")
    from apsq.data.registry import IMAGE, TEXT
    from apsq.train.config import check_model_name
    from apsq.train.tasks import build_task

    modality = check_model_name(cfg.model.name)
    if modality not in (TEXT, IMAGE):
        raise APSQError(f"apsq deploy takes classifiers (text models, and the digits CNN on images); model "
                        f"{cfg.model.name!r} is a {modality} model: export and run it from Python, "
                        "apsq.deploy.export(model, batch) and apsq.deploy.run(program, batch, model=model)")
    if modality == IMAGE:
        if source != "eval":
            raise APSQError(f"--input {source!r}: model {cfg.model.name!r} takes images; its inputs are the run's "
                            "evaluation split: --input eval")
        data: Any = build_task(cfg).eval
        lengths = None
    else:
        from apsq.data.text import TextExample, TokenizedText
        from apsq.train.models import load_tokenizer

        tok = load_tokenizer(cfg)
        if source == "eval":
            split = build_task(cfg, tok).eval
            if not isinstance(split, TokenizedText):  # text models evaluate on tokenized text
                raise APSQError(f"apsq deploy: the evaluation split of {cfg.model.name} is not text")
            data = split
        else:
            path = Path(source)
            if not path.is_file():
                raise APSQError(f"--input {source!r}: give 'eval' (the run's evaluation split) or a text file with one "
                                "sentence per line")
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if not lines:
                raise APSQError(f"--input {source}: the file holds no sentence")
            data = TokenizedText([TextExample(id=str(i), text=s, label=-1) for i, s in enumerate(lines)], tok,
                                 cfg.model.max_len)
        lengths = data.lengths()
    n = len(data) if limit is None else min(limit, len(data))
    # the first n; sentences batched by length (little padding), images in order
    order = list(range(n)) if lengths is None else sorted(range(n), key=lambda i: (lengths[i], i))

    def gen() -> Iterator[dict[str, torch.Tensor]]:
        for i in range(0, n, batch_size):
            b = data.batch(order[i:i + batch_size])
            if source != "eval":
                b.pop("labels", None)
            yield b

    return n, gen()


def _batch_len(batch: Mapping[str, torch.Tensor]) -> int:
    """Inputs in a batch (sentences or images): the first dimension of its first tensor."""
    return len(next(iter(batch.values())))


def run_batches(program: Program, source: str, backend: str = "golden", *, limit: int | None = None,
                batch_size: int = 32, verify: bool = True, mismatch_dir: str | Path = "deploy-mismatch",
                energy: bool = False, layer_batches: int | None = None, progress: Any = None,
                accelerator: Any = None) -> dict[str, Any]:
    """Run ``source`` through ``program`` on ``backend``; a JSON-ready summary (see the module docstring).

    ``layer_batches``: with ``verify``, check every layer stage by stage on the first ``layer_batches``
    batches only (``None``: all); later batches compare the final logits with the PyTorch model's.
    ``energy``: also the counted PSUM / RAE activity beside the energy model's for the same GEMMs
    (:func:`apsq.deploy.activity.energy_side_by_side`, under ``"energy"``), priced on ``accelerator`` (an
    :class:`apsq.hw.accelerator.Accelerator`; ``None``: the default).

    Raises :class:`apsq.deploy.DeployMismatch` at the first difference (with its ``.npz``)."""
    model = host_model(program)
    n, batches = input_batches(program.manifest.host.train_config, source, limit=limit, batch_size=batch_size)
    layers: dict[int, dict[str, Any]] = {}
    acts: dict[int, tuple[EngineLayer, list[Any], LayerActivity]] = {
        lay.index: (lay, [], LayerActivity()) for lay in program.layers}
    same_pred = same_logits = correct = labelled = done = batch_no = checked_sentences = 0
    wall = rtl_wall = 0.0
    lane_steps = cycles = 0
    unit = "sentences"  # what the summary counts: "images" for an image model (pixel_values)
    t0 = time.perf_counter()
    for batch in batches:
        labels = batch.pop("labels", None)
        unit = "images" if "pixel_values" in batch else "sentences"
        layer_checks = layer_batches is None or batch_no < layer_batches
        rep = run(program, batch, backend, model=model, verify=verify, mismatch_dir=mismatch_dir,
                  integer_check=done == 0, check_layers=layer_checks)  # integer_forward (int64, slow): first batch
        batch_no += 1
        checked_sentences += _batch_len(batch) if verify and layer_checks else 0
        out = outputs_of(rep.output)
        pred = out.argmax(-1)
        if verify:
            ref = outputs_of(rep.reference)
            same_pred += int((pred == ref.argmax(-1)).sum())
            same_logits += int((out == ref).all(-1).sum())
        if labels is not None and bool((labels >= 0).all()):
            correct += int((pred == labels).sum())
            labelled += len(labels)
        done += len(pred)
        wall += rep.wall_s
        rtl_wall += rep.rtl_wall_s
        lane_steps += rep.lane_steps
        for lr in rep.layers:
            d = layers.setdefault(lr.index, {"index": lr.index, "name": lr.name, "op": lr.op, "calls": 0, "outputs": 0,
                                             "checked_outputs": 0, "lane_steps": 0, "rtl_cycles": 0, "rtl_beats_in": 0})
            for k in ("calls", "outputs", "checked_outputs", "lane_steps", "rtl_cycles", "rtl_beats_in"):
                d[k] += getattr(lr, k)
            cycles += lr.rtl_cycles
            acts[lr.index][1].extend(lr.shapes)
            acts[lr.index][2].add(lr.activity)
        if progress is not None:
            progress(done, n)
    total = time.perf_counter() - t0
    m = program.manifest
    used = [acts[i] for i in sorted(acts) if acts[i][1]]
    for d in layers.values():
        d["activity"] = acts[d["index"]][2].to_dict()
    return {
        "backend": backend,
        "input": source,
        "input_kind": unit,
        unit: done,
        "verified": verify,
        "stages": (["fake-quant PyTorch", "integer_forward (first batch)", "program golden"]
                   + ([f"RTL ({backend})"] if backend != "golden" else [])) if verify else [],
        f"{unit}_checked_layer_by_layer": checked_sentences,
        "identical_predictions": same_pred if verify else None,
        "identical_logits": same_logits if verify else None,
        "accuracy": correct / labelled if labelled else None,
        "layers_per_sentence": len(m.layers),
        "lane_steps": lane_steps,
        "rtl_cycles": cycles if backend != "golden" else None,
        "rtl_simulation_s": round(rtl_wall, 3) if backend != "golden" else None,
        "rtl_lane_steps_per_s": round(lane_steps / rtl_wall) if rtl_wall > 0 else None,
        "engine_run_s": round(wall, 2),
        "wall_s": round(total, 2),
        f"{unit}_per_min": round(60 * done / total, 2) if total > 0 else None,
        "engine": m.engine.model_dump(),
        "program": {"source": m.source, "schema_version": m.schema_version, "manifest_sha256": manifest_digest(m),
                    "gs": sorted({lay.gs for lay in m.layers}),
                    "psum_granularity": sorted({lay.psum_granularity for lay in m.layers})},
        "per_layer": [layers[i] for i in sorted(layers)],
        "energy": energy_side_by_side(used, accelerator=accelerator) if energy and used else None,
        "machine": {**describe(), "torch_threads": torch.get_num_threads()},
    }
