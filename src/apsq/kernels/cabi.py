"""Typed C entry points: each kernel function declared once, called with keyword arguments only.

An :class:`Entry` lists a C function's parameters in order (:class:`Arg`); from that one list it sets
the ctypes signature of every dtype instance (``name_f32`` / ``name_f64``) and, on each call, checks
every argument before the pointer is passed: tensors must be CPU, contiguous, of the right dtype and
of the right number of elements (given as a function of the scalar arguments); step lists are
turned into ``double[n]`` arrays of the right length; derived arguments (the ``last_bad`` width flag,
the thread count) are filled in. Arguments are keywords, so an order slip is impossible, and a
missing, extra or mistyped one is a ``TypeError`` / ``ValueError`` before any memory is touched.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Arg", "Entry", "tensor", "scalar", "doubles", "u8_flag", "threads", "dtype_suffix"]

_CTYPES = {"long": ctypes.c_long, "int": ctypes.c_int}


@dataclass(frozen=True)
class Arg:
    """One C parameter.

    ``kind``: ``tensor`` (a pointer to a tensor's data; ``dtype`` is a torch dtype, ``"T"`` for the
    entry's float dtype or ``"bad"`` for uint8/int16 ``last_bad``), ``long`` / ``int`` (a Python
    int), ``doubles`` (a sequence of floats passed as ``double[numel]``, or a contiguous float64 CPU
    tensor of ``numel`` elements, passed as its data pointer), ``u8_flag`` (derived: 1
    when the tensor argument ``of`` is uint8), ``threads`` (derived: ``torch.get_num_threads()``).
    ``numel(args)``: the required element count, from the other arguments. ``optional``: None is
    allowed (a NULL pointer).
    """

    name: str
    kind: str
    dtype: object = None
    numel: Callable[[Mapping[str, Any]], int] | None = None
    optional: bool = False
    of: str | None = None

    @property
    def ctype(self):
        if self.kind in ("tensor", "doubles"):
            return ctypes.c_void_p
        if self.kind in ("u8_flag", "threads"):
            return ctypes.c_int
        return _CTYPES[self.kind]


def tensor(name: str, dtype: object, numel: Callable[[Mapping[str, Any]], int] | None = None,
           optional: bool = False) -> Arg:
    """A tensor argument (see :class:`Arg`)."""
    return Arg(name, "tensor", dtype, numel, optional)


def scalar(name: str, kind: str = "int") -> Arg:
    """A ``long`` or ``int`` argument."""
    return Arg(name, kind)


def doubles(name: str, numel: Callable[[Mapping[str, Any]], int]) -> Arg:
    """A ``const double *`` from a sequence of Python floats."""
    return Arg(name, "doubles", numel=numel)


def u8_flag(name: str, of: str) -> Arg:
    """Derived ``int``: 1 when tensor ``of`` is uint8 (else int16 or absent)."""
    return Arg(name, "u8_flag", of=of)


def threads(name: str = "nthreads") -> Arg:
    """Derived ``int``: ``torch.get_num_threads()``."""
    return Arg(name, "threads")


def dtype_suffix(dtype: torch.dtype) -> str:
    """``f32`` / ``f64``: the suffix of a kernel function for tensors of ``dtype``."""
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float64:
        return "f64"
    raise TypeError(f"the C kernels handle float32/float64, got {dtype}")


class Entry:
    """A C function ``symbol`` (``symbol_f32`` / ``symbol_f64`` when ``generic``) with parameters ``args``."""

    def __init__(self, symbol: str, args: Sequence[Arg], restype=None, generic: bool = True) -> None:
        self.symbol, self.args, self.restype, self.generic = symbol, tuple(args), restype, generic
        names = [a.name for a in self.args]
        if len(set(names)) != len(names):
            raise ValueError(f"{symbol}: duplicate parameter names {names}")
        self._given = tuple(a.name for a in self.args if a.kind not in ("u8_flag", "threads"))

    def symbols(self) -> list[str]:
        return [f"{self.symbol}_{s}" for s in ("f32", "f64")] if self.generic else [self.symbol]

    def declare(self, lib: ctypes.CDLL) -> None:
        """Set the ctypes signature of every instance in ``lib``."""
        for sym in self.symbols():
            f = getattr(lib, sym)
            f.argtypes = [a.ctype for a in self.args]
            f.restype = self.restype

    def _float_dtype(self, kw: Mapping[str, Any]) -> torch.dtype | None:
        for a in self.args:
            if a.kind == "tensor" and a.dtype == "T" and kw.get(a.name) is not None:
                return kw[a.name].dtype
        return None

    def __call__(self, lib: ctypes.CDLL, **kw):
        """Check every argument, then call the instance for the tensors' float dtype."""
        missing = [n for n in self._given if n not in kw]
        extra = [n for n in kw if n not in self._given]
        if missing or extra:
            raise TypeError(f"{self.symbol}: missing arguments {missing}, unexpected {extra}")
        dt = self._float_dtype(kw)
        if self.generic and dt is None:
            raise TypeError(f"{self.symbol}: no float tensor argument to choose the instance from")
        values = []
        for a in self.args:
            values.append(self._convert(a, kw, dt))
        fn = getattr(lib, self.symbol if not self.generic or dt is None else f"{self.symbol}_{dtype_suffix(dt)}")
        return fn(*values)

    def _convert(self, a: Arg, kw: Mapping[str, Any], dt: torch.dtype | None):
        if a.kind == "threads":
            return torch.get_num_threads()
        if a.kind == "u8_flag":
            t = kw[a.of]  # type: ignore[index]
            return int(t is not None and t.dtype == torch.uint8)
        v = kw[a.name]
        where = f"{self.symbol}: argument {a.name!r}"
        if a.kind in ("long", "int"):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{where} must be an int, got {type(v).__name__}")
            return v
        if a.kind == "doubles" and isinstance(v, torch.Tensor):
            if v.dtype != torch.float64 or v.device.type != "cpu" or not v.is_contiguous():
                raise ValueError(f"{where} must be a contiguous float64 CPU tensor, got {v.dtype} on {v.device}")
            if a.numel is not None and v.numel() != a.numel(kw):
                raise ValueError(f"{where} needs {a.numel(kw)} values, got {v.numel()}")
            return v.data_ptr()
        if a.kind == "doubles":
            vals = [float(x) for x in v]
            if a.numel is not None and len(vals) != a.numel(kw):
                raise ValueError(f"{where} needs {a.numel(kw)} values, got {len(vals)}")
            return (ctypes.c_double * len(vals))(*vals)
        if v is None:
            if not a.optional:
                raise ValueError(f"{where} is required")
            return None
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{where} must be a tensor, got {type(v).__name__}")
        kinds: dict[object, tuple[object, ...]] = {"T": (dt,), "bad": (torch.uint8, torch.int16)}
        want = kinds.get(a.dtype, (a.dtype,))
        if v.dtype not in want:
            raise ValueError(f"{where} must be {' or '.join(map(str, want))}, got {v.dtype}")
        if v.device.type != "cpu" or not v.is_contiguous():
            raise ValueError(f"{where} must be a contiguous CPU tensor")
        if a.numel is not None and v.numel() != a.numel(kw):
            raise ValueError(f"{where} must have {a.numel(kw)} elements, got {v.numel()} (shape {tuple(v.shape)})")
        return v.data_ptr()
