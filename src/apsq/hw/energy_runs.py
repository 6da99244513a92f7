"""The computations behind ``apsq energy``: pick a workload (built-in, traced or a YAML file), compare both
schedules, sweep a model's size option, and set ZigZag's result beside the APSQ energy model's.

Printing lives in :mod:`apsq.cli.energy`; figures in :mod:`apsq.hw.energy_plots`. Energies in pJ unless a
key says otherwise; the model is that of :mod:`apsq.hw.energy` (the paper's Section 4 / Figure 1).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from apsq.errors import APSQError, check_choice, check_int
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.dataflow import DATAFLOWS
from apsq.hw.energy import compare, evaluate
from apsq.hw.engine_zigzag import MAPPINGS, evaluate_zigzag
from apsq.hw.mapper import SCHEDULES
from apsq.hw.workloads import (
    BUILTIN_WORKLOADS,
    SWEEP_OPTION,
    Workload,
    builtin_workload,
    load_workload_file,
    trace_factory,
)

__all__ = ["GS_RANGE", "SWEEP_DEFAULTS", "load_workload", "run_sweep", "schedules_summary", "sweep_option",
           "zigzag_report"]

SWEEP_DEFAULTS = {
    "seq_len": (32, 64, 128, 256, 512, 1024, 2048),
    "image_size": (128, 256, 384, 512, 768, 1024),
    "context": (128, 512, 2048, 8192, 32768),
}
GS_RANGE = (1, 2, 3, 4)


def _import_factory(spec: str) -> Callable[..., Any]:
    """The object ``spec`` = ``module:attr`` or ``path/file.py:attr`` names (a model factory).

    A module name is imported with the current directory first on ``sys.path``, a file with its own folder
    there (as ``python path/file.py`` runs it: its sibling modules import), only for that import. An
    error while importing is an :class:`APSQError` naming the module or file.
    """
    if ":" not in spec:
        raise APSQError(f"--trace must be 'module:factory' or 'path/file.py:factory', got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise APSQError(f"--trace: file {mod_name!r} does not exist")
        s = importlib.util.spec_from_file_location(path.stem, path)
        if s is None or s.loader is None:
            raise APSQError(f"--trace: {mod_name!r} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(s)
        with _on_path(str(path.resolve().parent)):
            _run_import(lambda: s.loader.exec_module(module), f"file {mod_name!r}")  # type: ignore[union-attr]  # checked above
    else:
        # `apsq energy --trace mymodel:make` run beside mymodel.py: the current directory is on the path for
        # this import (as for `python -m`), so no PYTHONPATH=. is needed
        with _on_path(str(Path.cwd())):
            module = _run_import(lambda: importlib.import_module(mod_name), f"module {mod_name!r}")
    if not hasattr(module, attr):
        raise APSQError(f"--trace: module {mod_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


@contextmanager
def _on_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` inside the block (left as it was when it was there already)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            sys.path.remove(folder)


def _run_import(load: Callable[[], Any], what: str) -> Any:
    try:
        return load()
    except ImportError as exc:
        raise APSQError(f"--trace: cannot import {what} (searched its folder / the current directory and "
                        f"sys.path): {exc}") from None
    except Exception as exc:  # the user's module failed while it was imported
        raise APSQError(f"--trace: importing {what} failed: {type(exc).__name__}: {exc}") from exc


def load_workload(model: str | None, trace: str | None, workload_file: str | Path | None = None,
                  **options: Any) -> Workload:
    """A built-in workload (``model``), one traced from ``module:factory`` (``trace``) or a workload YAML."""
    if sum(x is not None for x in (model, trace, workload_file)) != 1:
        raise APSQError(f"give exactly one of --model ({', '.join(BUILTIN_WORKLOADS)}), --trace module:factory "
                        "or --workload FILE")
    if model is not None:
        return builtin_workload(model, **options)
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise APSQError(f"options {given} apply to built-in models only; a --trace factory or --workload file sets "
                        "its own shapes")
    if workload_file is not None:
        return load_workload_file(workload_file)
    assert trace is not None  # exactly one of model / trace / workload_file (checked above)
    factory = _import_factory(trace)
    try:
        return trace_factory(factory, name=trace)
    except APSQError:
        raise
    except Exception as exc:  # the user's model failed to run on the meta device
        raise APSQError(f"--trace {trace}: tracing on the meta device failed: {type(exc).__name__}: {exc}") from exc


def sweep_option(model: str, phase: str | None = None) -> str:
    """The size option ``apsq energy sweep`` varies for ``model``: ``context`` for ``llama2-7b`` decode, else
    :data:`apsq.hw.workloads.SWEEP_OPTION` (``seq_len`` or ``image_size``); its default values are
    ``SWEEP_DEFAULTS[option]``. Unknown models raise :class:`APSQError` listing the built-ins; so does a
    ``phase`` for another model than ``llama2-7b`` (it was ignored), or one other than prefill / decode."""
    check_choice("model", model, tuple(BUILTIN_WORKLOADS))
    if phase is not None:
        if model != "llama2-7b":
            raise APSQError(f"--phase is llama2-7b's (prefill | decode); model {model!r} has none: it sweeps "
                            f"{SWEEP_OPTION[model]}")
        check_choice("--phase", phase, ("prefill", "decode"))
    return "context" if (model == "llama2-7b" and phase == "decode") else SWEEP_OPTION[model]


def run_sweep(
    model: str,
    dataflow: str,
    values: tuple[int, ...],
    psum_bits: int = 8,
    acc: Accelerator | None = None,
    phase: str | None = None,
    progress: bool = True,
    mode: str = "apsq",
    schedule: str = "untiled",
    console: Any = None,
) -> dict[str, Any]:
    """Energy vs the model's size option, for the baseline and gs = 1..4 (those at most the PSUM buffer's
    banks: an accelerator with 2 banks gets gs 1 and 2, as ``apsq energy`` refuses more); first spilling size
    per config (``first_spill``, in column order).

    With ``progress`` a rich progress bar is drawn on ``console`` (a :class:`rich.console.Console`; the
    CLI passes its stderr console so that piped stdout holds the results only)."""
    check_choice("model", model, tuple(BUILTIN_WORKLOADS))
    check_choice("dataflow", dataflow, tuple(DATAFLOWS))
    option = sweep_option(model, phase)
    extra = {"phase": phase} if model == "llama2-7b" and phase else {}
    banks = (acc or default_accelerator()).buffers.psum.banks
    gs_values = tuple(g for g in GS_RANGE if g <= banks) or (1,)  # gs above the PSUM banks: not this machine's
    configs = ["baseline"] + [f"gs={g}" for g in gs_values]
    rows: list[dict[str, Any]] = []
    from rich.progress import track

    it = track(values, description=f"sweep {model} {option}", console=console) if progress else values
    for v in it:
        w = builtin_workload(model, **{option: check_int(option, v, lo=1)}, **extra)
        reps = [evaluate(w, dataflow, "none", 1, psum_bits, acc, schedule=schedule)]
        reps += [evaluate(w, dataflow, mode, g, psum_bits, acc, schedule=schedule) for g in gs_values]
        for c, r in zip(configs, reps):
            rows.append({option: v, "config": c, "total_pj": r.total_pj, "psum_pj": r.psum_pj, "spills": r.psum_spills})
    first_spill = {}
    for c in configs:
        hits = [r[option] for r in rows if r["config"] == c and r["spills"]]
        first_spill[c] = min(hits) if hits else None
    return {
        "model": model,
        "dataflow": dataflow,
        "option": option,
        "psum_bits": psum_bits,
        "schedule": schedule,
        "rows": rows,
        "first_spill": first_spill,
    }


def schedules_summary(w: Workload, dataflow: str, gs_spec: Any, psum_bits: int, acc: Accelerator, mode: str,
                      **options: Any) -> dict[str, Any]:
    """Total / PSUM-only / on-chip savings under both schedules, and OS beside them (pJ and fractions)."""
    out: dict[str, Any] = {}
    for sched in SCHEDULES:
        c = compare(w, dataflow, gs_spec, psum_bits, acc, mode=mode, schedule=sched, **options)
        os_e = evaluate(w, "os", "none", gs_spec, psum_bits, acc, schedule=sched,
                        **{k: v for k, v in options.items() if k != "baseline_bits"})
        out[sched] = {
            "baseline_pj": c.baseline.total_pj,
            "apsq_pj": c.apsq.total_pj,
            "reduction": c.reduction,
            "psum_reduction": c.psum_reduction,
            "on_chip_reduction": c.on_chip_reduction,
            "baseline_spills": c.baseline.psum_spills,
            "apsq_spills": c.apsq.psum_spills,
            "os_pj": os_e.total_pj,
        }
    return out


def zigzag_report(w: Workload, dataflow: str, psum_bits: int, acc: Accelerator, baseline_bits: int | None,
                  spill: str, progress: bool = False, console: Any = None, mapping: str = "fixed") -> dict[str, Any]:
    """ZigZag's result beside ours, per layer and in total. ``mapping`` (:data:`~apsq.hw.engine_zigzag.MAPPINGS`):
    ``fixed`` = both engines on the same fixed untiled orders; ``temporal`` / ``search`` = ZigZag's searched
    mappings beside our mapper (``schedule="tiled"``), each searching per PSUM width. Ours first: it is cheap
    and validates the point (a bad ``psum_bits`` or ``mapping`` fails before ZigZag runs); ``progress``: a bar
    over ZigZag's layer shapes on ``console``."""
    check_choice("mapping", mapping, MAPPINGS)
    schedule = "untiled" if mapping == "fixed" else "tiled"
    ours = compare(w, dataflow, None, psum_bits, acc, mode="apsq", baseline_bits=baseline_bits, spill=spill,
                   gs_above_banks="warn", schedule=schedule)
    z = evaluate_zigzag(w, dataflow, psum_bits, acc, baseline_bits, progress=progress, console=console,
                        mapping=mapping)
    out = z.to_json()
    out["accelerator"] = acc.name
    out["zigzag_mapping"] = mapping
    out["apsq_model"] = {"spill": spill, "schedule": schedule, "gs": 1, "reduction": ours.reduction,
                         "baseline_pj": ours.baseline.total_pj, "apsq_pj": ours.apsq.total_pj}
    for row, r in zip(out["layers"], ours.layer_reduction):
        row["apsq_model_reduction"] = float(r)
        row["difference_pp"] = 100 * (float(r) - row["reduction"])
    out["difference_pp"] = 100 * (ours.reduction - z.reduction)
    return out
