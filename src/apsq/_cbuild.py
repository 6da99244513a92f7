"""Compile a C source with the system compiler into a cached shared library (ctypes).

Used by the PSUM kernels (:mod:`apsq.psum._ckernel`, :mod:`apsq.psum._cgemm`) and the LSQ kernel
(:mod:`apsq.quant._clsq`). They need no
Python or torch headers — only ``cc`` — and build in about a second; the shared object is cached
in ``$APSQ_CACHE_DIR`` (default ``~/.cache/apsq``, a per-user temp folder when that is not
writable) under a hash of the source, the flags, the compiler and the CPU, and written atomically
(concurrent builders agree). Flag sets are tried in order (``-march=native -fopenmp`` first) until
one compiles and loads.

Exactness: every set includes ``-O3 -fno-fast-math -ffp-contract=off`` (plus
``-fno-trapping-math``, which lets ``floor`` vectorise and changes no result), so each ``+`` and
``*`` in the source is one IEEE operation in the written precision and order.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = ["build_library", "LazyLibrary", "FLAG_SETS", "instantiate", "dtype_suffix", "step_arrays",
           "reciprocals_exact"]

FLAGS_BASE = ["-O3", "-fno-fast-math", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared", "-std=c11"]
FLAG_SETS: list[list[str]] = [
    ["-march=native", "-fopenmp"],
    ["-fopenmp"],
    ["-march=native"],
    [],
]


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    """``$APSQ_CACHE_DIR``, else ``~/.cache/apsq``; a per-user temp folder when that is not writable."""
    root = Path(os.environ.get("APSQ_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "apsq"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"apsq-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def build_library(name: str, source: str, extra_flags: Sequence[str] = ()) -> ctypes.CDLL:
    """Compile ``source`` (one C translation unit) as ``name`` and load it; raises RuntimeError on failure.

    ``extra_flags`` (e.g. ``-DAPSQ_PORTABLE``) are added to every flag set and to the cache key.
    """
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{cc} --version failed: {exc}") from exc
    errors = []
    for flags in FLAG_SETS:
        flags = [*flags, *extra_flags]
        key = hashlib.sha256("\0".join([source, version, _cpu_id(), *flags]).encode()).hexdigest()[:16]
        target = cache_dir() / f"{name}_{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / f"{name}.c"
                src.write_text(source)
                out = Path(tmp) / f"{name}.so"
                res = subprocess.run([cc, *FLAGS_BASE, *flags, str(src), "-o", str(out), "-lm"],
                                     capture_output=True, text=True, timeout=120)
                if res.returncode != 0:
                    errors.append(f"{' '.join(flags) or 'plain'}: {res.stderr.strip()[-400:]}")
                    continue
                tmp_target = target.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(out, tmp_target)
                os.replace(tmp_target, target)
        try:
            return ctypes.CDLL(str(target))
        except OSError as exc:
            errors.append(f"{' '.join(flags) or 'plain'}: cannot load: {exc}")
    raise RuntimeError("; ".join(errors))


class LazyLibrary:
    """A kernel library built on first use (thread-safe); remembers it, or why it is unavailable.

    ``source`` returns the C text, ``declare`` sets the ctypes signatures. ``APSQ_NO_CKERNEL``
    disables every library (the callers then use their torch code).
    """

    def __init__(self, name: str, source: Callable[[], str], declare: Callable[[ctypes.CDLL], None],
                 extra_flags: Sequence[str] = ()) -> None:
        self.name, self._source, self._declare, self.extra_flags = name, source, declare, list(extra_flags)
        self._lock = threading.Lock()
        self._tried = False
        self._lib: ctypes.CDLL | None = None
        self.error: str | None = None

    def get(self) -> ctypes.CDLL | None:
        """The loaded library, or None."""
        with self._lock:
            if not self._tried:
                self._tried = True
                if os.environ.get("APSQ_NO_CKERNEL"):
                    self.error = "disabled by APSQ_NO_CKERNEL"
                else:
                    try:
                        self._lib = self.build()
                    except Exception as exc:  # noqa: BLE001 - any failure means: use the torch code
                        self.error = str(exc)
        return self._lib

    def build(self) -> ctypes.CDLL:
        """Compile (or load from the cache) and declare, raising on failure; does not remember it."""
        lib = build_library(self.name, self._source(), self.extra_flags)
        self._declare(lib)
        return lib


DTYPE_SUFFIXES = {"f32": ("float", "floorf"), "f64": ("double", "floor")}


def instantiate(prologue: str, body: str) -> str:
    """One translation unit: ``prologue``, then ``body`` once per dtype with ``T`` (float / double),
    ``FLOOR`` (floorf / floor) and ``SUF(name)`` (``name_f32`` / ``name_f64``) defined."""
    text = [prologue]
    for suf, (ctype, floor) in DTYPE_SUFFIXES.items():
        text.append(f"\n#define T {ctype}\n#define FLOOR {floor}\n#define SUF(name) name##_{suf}\n")
        text.append(body)
        text.append("\n#undef T\n#undef FLOOR\n#undef SUF\n")
    return "".join(text)


# ------------------------------------------------------------------------------------------------
# What every kernel wrapper needs: the dtype suffix of its functions, its steps as C arrays, and
# whether multiplying by 1/s (what the kernels do) is exactly dividing by s.
# ------------------------------------------------------------------------------------------------
def dtype_suffix(dtype: torch.dtype) -> str:
    """``f32`` / ``f64``: the suffix of a kernel function for tensors of ``dtype``."""
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float64:
        return "f64"
    raise TypeError(f"the C kernels handle float32/float64, got {dtype}")


def step_arrays(steps: Sequence[float]):
    """``(s, 1/s)`` as two ``double[n]`` C arrays."""
    n = len(steps)
    return (ctypes.c_double * n)(*steps), (ctypes.c_double * n)(*[1.0 / v for v in steps])


def reciprocals_exact(steps: Sequence[float], dtype: torch.dtype) -> bool:
    """True when every step is positive and ``1/s`` is exactly representable in ``dtype``, so that
    ``x * (1/s)`` (the kernels) is the same number as ``x / s`` (the reference) for power-of-two steps."""
    try:
        inv = torch.tensor([1.0 / v for v in steps], dtype=torch.float64)
    except (OverflowError, ZeroDivisionError):
        return False
    s = torch.tensor(list(steps), dtype=torch.float64)
    back = inv.to(dtype).to(torch.float64)
    return bool((s > 0).all() and torch.isfinite(back).all() and (back == inv).all() and (inv * s == 1).all())
