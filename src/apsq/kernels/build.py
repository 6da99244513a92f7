"""Compile a C source with the system compiler into a cached shared library, and load it safely.

The kernels need no Python or torch headers — only ``cc`` — and build in about a second. Flag sets
are tried in order (``-march=native -fopenmp`` first) until one compiles and loads.

Exactness: every set includes ``-O3 -fno-fast-math -ffp-contract=off`` (plus ``-fno-trapping-math``,
which lets ``floor`` vectorise and changes no result), so each ``+`` and ``*`` in the source is one
IEEE operation in the written precision and order.

The cache (issue 16 item 11): one folder, ``<APSQ_CACHE>/kernels`` (:func:`apsq.cache.cache_root`,
default ``~/.cache/apsq``). When that cannot be written, a per-user folder ``<tmp>/apsq-<uid>`` created
with mode 0700. A library file is named by a hash of the source, the flags, the compiler and the CPU,
and written atomically (concurrent builders agree) together with a ``.sha256`` record of its content.
Before loading, :func:`check_private` checks that the folder and the file are owned by this user and
writable by nobody else (the folder: not a symlink, no group/other write; the fallback folder:
no group/other access at all), and :func:`load_verified` loads only a file whose SHA-256 equals the
recorded one — a library planted or damaged by someone else is rebuilt, never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from apsq.cache import CacheError, check_private, private_dir, store_verified, verify_stored
from apsq.kernels import options
from apsq.machine import cpu_label

__all__ = ["FLAG_SETS", "CacheError", "kernel_dir", "check_private", "build_library", "load_verified",
           "LazyLibrary", "instantiate", "DTYPE_SUFFIXES", "read_source", "warn_fallback_once"]

CSRC = Path(__file__).with_name("csrc")

FLAGS_BASE = ["-O3", "-fno-fast-math", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared", "-std=c11"]
FLAG_SETS: list[list[str]] = [
    ["-march=native", "-fopenmp"],
    ["-fopenmp"],
    ["-march=native"],
    [],
]


def compiler() -> str | None:
    """The first working C compiler of :func:`apsq.kernels.options.compiler_candidates`, or None."""
    for cc in options.compiler_candidates():
        if shutil.which(cc):
            return cc
    return None


def _cpu_id() -> str:
    """Part of a build's cache key: a ``-march=native`` build must not be reused on another CPU."""
    return cpu_label()


def kernel_dir() -> Path:
    """The folder compiled kernels are cached in (created, private): :func:`apsq.cache.private_dir`."""
    return private_dir("kernels")


def load_verified(target: Path) -> ctypes.CDLL:
    """Load ``target`` after checking its folder and file (:func:`check_private`) and that its SHA-256
    equals the one recorded at build time (``<target>.sha256``; :func:`apsq.cache.verify_stored`);
    raises CacheError otherwise."""
    verify_stored(target)
    return ctypes.CDLL(str(target))


def _compile(cc: str, source: str, flags: list[str], name: str, target: Path) -> str | None:
    """Compile into ``target`` (atomically, with its hash record); the error text on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        out = Path(tmp) / f"{name}.so"
        # relative names, so the library's bytes do not depend on the temp folder (concurrent builders
        # of one key write identical files, and each one's hash record fits the other's library)
        res = subprocess.run([cc, *FLAGS_BASE, *flags, src.name, "-o", out.name, "-lm"],
                             capture_output=True, text=True, timeout=120, cwd=tmp)
        if res.returncode != 0:
            return res.stderr.strip()[-400:]
        data = out.read_bytes()
    store_verified(target, data)
    return None


def build_library(name: str, source: str, extra_flags: Sequence[str] = ()) -> ctypes.CDLL:
    """Compile ``source`` (one C translation unit) as ``name`` (or take it from the cache) and load it.

    ``extra_flags`` (e.g. ``-DAPSQ_PORTABLE``) are added to every flag set and to the cache key.
    A cached library that fails the checks of :func:`load_verified` is rebuilt once.
    Raises RuntimeError (CacheError for an unsafe cache) when no flag set gives a loadable library.
    """
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang, or $CC) on PATH")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{cc} --version failed: {exc}") from exc
    folder = kernel_dir()
    errors = []
    for flags in FLAG_SETS:
        flags = [*flags, *extra_flags]
        key = hashlib.sha256("\0".join([source, version, _cpu_id(), *flags]).encode()).hexdigest()[:16]
        target = folder / f"{name}_{key}.so"
        label = " ".join(flags) or "plain"
        if target.exists():
            try:
                return load_verified(target)
            except (CacheError, OSError):  # damaged, planted or without a record: rebuild it
                pass
        for _attempt in range(2):  # a concurrent builder may replace the pair between our writes: once more
            err = _compile(cc, source, flags, name, target)
            if err is not None:
                errors.append(f"{label}: {err}")
                break
            try:
                return load_verified(target)
            except (CacheError, OSError) as exc:
                last = f"{label}: cannot load: {exc}"
        else:
            errors.append(last)
    raise RuntimeError("; ".join(errors))


_WARNED: set[str] = set()
_WARN_LOCK = threading.Lock()


def warn_fallback_once(reason: str | None) -> None:
    """One RuntimeWarning per process: the C kernels are unavailable and the torch code is used."""
    with _WARN_LOCK:
        if _WARNED:
            return
        _WARNED.add("c")
    warnings.warn(f"apsq: the C kernels are unavailable ({reason}); using the slower torch code (same "
                  f"results; a C compiler such as gcc gives the fast path)", RuntimeWarning, stacklevel=3)


class LazyLibrary:
    """A kernel library built on first use (thread-safe); remembers it, or why it is unavailable.

    ``source`` returns the C text, ``declare`` sets the ctypes signatures.
    """

    def __init__(self, name: str, source: Callable[[], str], declare: Callable[[ctypes.CDLL], None],
                 extra_flags: Sequence[str] = ()) -> None:
        self.name, self._source, self._declare, self.extra_flags = name, source, declare, list(extra_flags)
        self._lock = threading.Lock()
        self._tried = False
        self._lib: ctypes.CDLL | None = None
        self.error: str | None = None

    def get(self) -> ctypes.CDLL | None:
        """The loaded library, or None (why: :attr:`error`)."""
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    self._lib = self.build()
                except Exception as exc:  # noqa: BLE001 - any failure means: use the torch code
                    self.error = str(exc)
        return self._lib

    def require(self) -> ctypes.CDLL:
        """The loaded library, for callers that checked it is available; RuntimeError (naming why) if not."""
        lib = self.get()
        if lib is None:
            raise RuntimeError(f"kernel library {self.name} is unavailable: {self.error}")
        return lib

    def build(self) -> ctypes.CDLL:
        """Compile (or load from the cache) and declare, raising on failure; does not remember it."""
        lib = build_library(self.name, self._source(), self.extra_flags)
        self._declare(lib)
        return lib


DTYPE_SUFFIXES = {"f32": ("float", "floorf"), "f64": ("double", "floor")}
"""Per dtype suffix: the C type and its floor; :func:`instantiate` also defines ``T_F32`` (1 for float, 0
for double: code written with float intrinsics is compiled for the float instance only)."""


def read_source(*names: str) -> str:
    """The text of ``csrc/<name>`` files, joined."""
    return "".join((CSRC / n).read_text() for n in names)


def instantiate(prologue: str, body: str) -> str:
    """One translation unit: ``prologue``, then ``body`` once per dtype with ``T`` (float / double),
    ``FLOOR`` (floorf / floor), ``T_F32`` (1 / 0) and ``SUF(name)`` (``name_f32`` / ``name_f64``) defined."""
    text = [prologue]
    for suf, (ctype, floor) in DTYPE_SUFFIXES.items():
        f32 = int(ctype == "float")
        text.append(f"\n#define T {ctype}\n#define FLOOR {floor}\n#define T_F32 {f32}\n#define SUF(name) name##_{suf}\n")
        text.append(body)
        text.append("\n#undef T\n#undef FLOOR\n#undef T_F32\n#undef SUF\n")
    return "".join(text)
