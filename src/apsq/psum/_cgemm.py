"""The PSUM accumulation fused with its integer matmul (C, ``csrc/psum_gemm*.c``), via ctypes.

:func:`int_operands` turns fake-quantized float operands into the kernel's int16 codes when that is
exact; :func:`forward`, :func:`backward` and :func:`correct` run the kernel. The tile partial sums
are computed in registers from the codes and quantized at once (see ``csrc/psum_gemm.c``), so the
``[n, M, N]`` tiles are never written to memory. :mod:`apsq.psum.fused` uses this path when the
layer passes its operand steps; otherwise it uses the batched matmul + :mod:`apsq.psum._ckernel`.

Exactness (why this equals the reference path bit for bit): with ``x = cx * sx`` and
``W[o] = cw[o] * sw[o]`` (integer codes, power-of-two steps), every product ``x[m,k] W[o,k]`` is
``cx cw * unit[o]`` exactly, and every partial sum of a tile is an integer below
``max|cx| max|cw| t`` times ``unit[o]``. When that bound is at most ``2^24`` (float32; ``2^31 - 1``
for float64, the int32 limit) the float matmul of the reference has no rounding, whatever its
order, and equals the kernel's ``(float)sum(cx cw) * unit[o]``.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from apsq._cbuild import DTYPE_SUFFIXES, LazyLibrary, dtype_suffix, instantiate, reciprocals_exact, step_arrays
from apsq.errors import check_choice
from apsq.psum.tiling import num_tiles
from apsq.quant.ops import is_power_of_two

__all__ = ["available", "build_error", "isa", "IntOperands", "int_operands", "forward", "backward", "correct"]

_CSRC = Path(__file__).with_name("csrc")


def source() -> str:
    """The translation unit: the prologue, then the dtype-generic body once per dtype."""
    return instantiate((_CSRC / "psum_gemm.c").read_text(), (_CSRC / "psum_gemm_body.c").read_text())


def _declare(lib: ctypes.CDLL) -> None:
    vp, lg, it = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.apsq_gemm_isa.argtypes, lib.apsq_gemm_isa.restype = [], it
    for suf in DTYPE_SUFFIXES:
        f = getattr(lib, f"apsq_gemm_fwd_{suf}")
        f.argtypes = [vp, vp, lg, lg, lg, lg, lg, vp, vp, vp, it, it, it, it, vp, vp, it, it]
        f.restype = it
        b = getattr(lib, f"apsq_gemm_bwd_{suf}")
        b.argtypes = [vp, vp, lg, lg, lg, lg, lg, vp, vp, vp, it, it, it, it, vp, vp, it, vp, vp, it]
        b.restype = it
        k = getattr(lib, f"apsq_codes16_{suf}")
        k.argtypes, k.restype = [vp, lg, lg, lg, lg, vp, it, vp, it], lg
        c = getattr(lib, f"apsq_gemm_correct_{suf}")
        c.argtypes = [vp, vp, lg, lg, lg, lg, lg, lg, vp, vp, it, it, it, it, vp, vp, it, vp, lg, vp, vp, vp, vp, it]
        c.restype = it


GEMM_ISAS = {"native": [], "avx512bw": ["-mno-avx512vnni"], "avx2": ["-mno-avx512f"], "portable": ["-DAPSQ_PORTABLE"]}
"""Builds of the kernel: what ``-march=native`` gives (AVX-512 VNNI here), AVX-512 BW without VNNI
(``vpmaddwd`` + add), AVX2 (``vpmaddwd`` on 256 bits), and the plain-C micro-kernel (any CPU, about
20x slower). ``APSQ_GEMM_ISA`` picks one (default ``native``); the tests run all four. Left to
itself (``native``), the integer path is used only where the build has a SIMD micro-kernel: on a
CPU with neither AVX-512 nor AVX2 the float-tile path is faster."""

_LIBS = {name: LazyLibrary("psum_gemm", source, lambda lib: _declare(lib), flags) for name, flags in GEMM_ISAS.items()}


def _isa_choice() -> str:
    want = os.environ.get("APSQ_GEMM_ISA", "native")
    check_choice("APSQ_GEMM_ISA", want, tuple(GEMM_ISAS))
    return want


def library(variant: str | None = None) -> ctypes.CDLL | None:
    """The loaded kernel build ``variant`` (:data:`GEMM_ISAS`; default ``APSQ_GEMM_ISA``), None if it
    does not build. ``APSQ_NO_CKERNEL`` disables all."""
    return _LIBS[_isa_choice() if variant is None else variant].get()


def available() -> bool:
    """True when the fused integer kernel compiled (or was cached) and loaded."""
    return library() is not None


def build_error() -> str | None:
    """Why the kernel is unavailable (None when it is available)."""
    library()
    return _LIBS[_isa_choice()].error


def isa() -> str:
    """The micro-kernel in use: ``avx512-vnni``, ``avx512-bw``, ``avx2`` or ``portable``."""
    lib = library()
    return ("portable", "avx512-bw", "avx512-vnni", "avx2")[lib.apsq_gemm_isa()] if lib is not None else "unavailable"


@dataclass(frozen=True)
class IntOperands:
    """int16 codes ``xa [B*M, n*te]``, ``wb [B*N, n*te]`` (``batch`` = B stacked products, each tile
    zero-padded to even depth ``te``) and ``unit [N]`` (the operands' dtype): tile ``i`` of product ``b``
    is ``unit * (xa_b,i @ wb_b,i.T)``."""

    xa: torch.Tensor
    wb: torch.Tensor
    unit: torch.Tensor
    te: int
    batch: int = 1

    @property
    def dims(self) -> tuple[int, int, int]:
        """``(B, M, N)``."""
        return self.batch, self.xa.shape[0] // self.batch, self.wb.shape[0] // self.batch


def _codes16(v: torch.Tensor, step: torch.Tensor, tile: int, te: int) -> tuple[torch.Tensor, int] | None:
    """``v [R, K] / step`` (one step, or one per row) as int16 ``[R, n*te]`` (tile ``i`` at
    ``[i*te, i*te + tile)``) and its largest magnitude; None unless every code is an integer in
    ``[-32767, 32767]``. One pass in C."""
    v = v.contiguous()
    rows, k = v.shape
    steps = step.reshape(-1).tolist()
    if not reciprocals_exact(steps, v.dtype):
        return None
    _, inv = step_arrays(steps)
    out = torch.empty(rows, num_tiles(k, tile) * te, dtype=torch.int16)
    mx = getattr(library(), f"apsq_codes16_{dtype_suffix(v.dtype)}")(
        v.data_ptr(), rows, k, tile, te, inv, int(len(steps) > 1), out.data_ptr(), torch.get_num_threads())
    return None if mx < 0 else (out, mx)


def int_operands(x2: torch.Tensor, w: torch.Tensor, tile: int, x_step: torch.Tensor | None,
                 w_step: torch.Tensor | None, batch: int = 1) -> IntOperands | None:
    """The kernel's operands for ``x2 [B*M, K] @ w [B*N, K].T`` (``batch`` = B independent products),
    or None when the integer path would not be exact (or the kernel is unavailable): ``x_step`` a
    single power of two, ``w_step`` one per output row ``N`` (or a single one), ``x2 / x_step`` and
    ``w / w_step`` integers of at most 15 bits with ``max|cx| max|cw| tile`` within the exact-sum
    bound (module docstring)."""
    if x_step is None or w_step is None or x2.dtype not in (torch.float32, torch.float64) or not available():
        return None
    if isa() == "portable" and _isa_choice() == "native":  # no SIMD here: the float-tile path is faster
        return None
    if x2.shape[0] % batch or w.shape[0] % batch:
        return None
    sx = x_step.detach().to(torch.float64).reshape(-1)
    sw = w_step.detach().to(torch.float64).reshape(-1)
    n_out = w.shape[0] // batch
    if sx.numel() != 1 or sw.numel() not in (1, n_out):
        return None
    if not (bool(is_power_of_two(sx).all()) and bool(is_power_of_two(sw).all())):
        return None
    te = tile + (tile % 2)
    sw = sw.expand(n_out)
    cx = _codes16(x2.detach(), sx, tile, te)
    row_steps = sw[:1] if bool((sw == sw[0]).all()) else sw.repeat(batch)  # one per row of w, or one
    cw = _codes16(w.detach(), row_steps, tile, te)
    if cx is None or cw is None:
        return None
    limit = 2**24 if x2.dtype == torch.float32 else 2**31 - 1
    if cx[1] * cw[1] * tile > limit:
        return None
    unit = sx * sw
    info = torch.finfo(x2.dtype)
    if float(unit.min()) < info.tiny or float(unit.max()) * limit > info.max:
        return None
    return IntOperands(cx[0], cw[0], unit.to(x2.dtype).contiguous(), te, batch)


def _ok(rc: int) -> None:
    if not rc:
        raise MemoryError("the fused PSUM kernel could not allocate its packed operands")


def forward(ops: IntOperands, s: list[float], plan, out: torch.Tensor,
            last_bad: torch.Tensor | None) -> None:
    """Writes the accumulated output ``out [B, M, N]`` and, for apsq, ``last_bad [B, M, N]`` (contiguous)."""
    lib = library()
    b, m, n_out = ops.dims
    sd, si = step_arrays(s)
    _ok(getattr(lib, f"apsq_gemm_fwd_{dtype_suffix(out.dtype)}")(
        ops.xa.data_ptr(), ops.wb.data_ptr(), b, m, n_out, plan.n, ops.te, ops.unit.data_ptr(), sd, si,
        int(plan.mode == "apsq"), plan.gs, plan.qn, plan.qp, out.data_ptr(),
        None if last_bad is None else last_bad.data_ptr(), int(plan.bad_dtype == torch.uint8),
        torch.get_num_threads()))


def backward(ops: IntOperands, s: list[float], plan, g: torch.Tensor,
             last_bad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-size gradients (float64 ``[n]``) and the uint8 ``[B, M, N]`` flags of outputs needing a
    correction; ``g [B, M, N]`` contiguous."""
    lib = library()
    b, m, n_out = ops.dims
    grad_s = torch.empty(plan.n, dtype=torch.float64)
    flag = torch.empty(b, m, n_out, dtype=torch.uint8)
    sd, si = step_arrays(s)
    _ok(getattr(lib, f"apsq_gemm_bwd_{dtype_suffix(g.dtype)}")(
        ops.xa.data_ptr(), ops.wb.data_ptr(), b, m, n_out, plan.n, ops.te, ops.unit.data_ptr(), sd, si,
        int(plan.mode == "apsq"), plan.gs, plan.qn, plan.qp, g.data_ptr(),
        None if last_bad is None else last_bad.data_ptr(), int(plan.bad_dtype == torch.uint8),
        grad_s.data_ptr(), flag.data_ptr(), torch.get_num_threads()))
    return grad_s, flag


def correct(ops: IntOperands, s: list[float], plan, tile: int, g: torch.Tensor, last_bad: torch.Tensor | None,
            idx: torch.Tensor, xp: torch.Tensor, wp: torch.Tensor, gxp: torch.Tensor | None,
            gwp: torch.Tensor | None) -> None:
    """In place: removes from ``gxp [B*M, n*t]`` / ``gwp [B*N, n*t]`` (``g @ W`` / ``g^T @ x`` per product)
    the terms of the tiles whose gradient is 0 at the flagged outputs ``idx`` (ascending flat indices
    into ``[B, M, N]``); ``xp`` / ``wp`` are the float operands in the same layout."""
    lib = library()
    b, m, n_out = ops.dims
    idx = idx.to(torch.int64).contiguous()
    _, si = step_arrays(s)
    _ok(getattr(lib, f"apsq_gemm_correct_{dtype_suffix(g.dtype)}")(
        ops.xa.data_ptr(), ops.wb.data_ptr(), b, m, n_out, plan.n, ops.te, tile, ops.unit.data_ptr(), si,
        int(plan.mode == "apsq"), plan.gs, plan.qn, plan.qp, g.data_ptr(),
        None if last_bad is None else last_bad.data_ptr(), int(plan.bad_dtype == torch.uint8),
        idx.data_ptr(), idx.numel(), xp.data_ptr(), wp.data_ptr(),
        None if gxp is None else gxp.data_ptr(), None if gwp is None else gwp.data_ptr(),
        torch.get_num_threads()))
