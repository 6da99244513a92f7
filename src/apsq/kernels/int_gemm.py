"""The PSUM accumulation fused with its integer matmul (C, ``csrc/psum_gemm*.c``), via typed ctypes entries.

:func:`int_operands` turns fake-quantized float operands into the kernel's int16 codes when that is
exact; :func:`forward` and :func:`backward` (step gradients and the operand gradients' correction) run the kernel. The tile partial sums
are computed in registers from the codes and quantized at once (see ``csrc/psum_gemm.c``), so the
``[n, M, N]`` tiles are never written to memory. The dispatcher (:mod:`apsq.kernels.dispatch`) takes this path when
the layer passes its operand steps; otherwise the batched matmul + :mod:`apsq.kernels.chunk`.

Exactness (why this equals the reference path bit for bit): with ``x = cx * sx`` and
``W[o] = cw[o] * sw[o]`` (integer codes, power-of-two steps), every product ``x[m,k] W[o,k]`` is
``cx cw * unit[o]`` exactly, and every partial sum of a tile is an integer below
``max|cx| max|cw| t`` times ``unit[o]``. When that bound is at most ``2^24`` (float32; ``2^31 - 1``
for float64, the int32 limit) the float matmul of the reference has no rounding, whatever its
order, and equals the kernel's ``(float)sum(cx cw) * unit[o]``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from apsq.kernels import options
from apsq.kernels.build import LazyLibrary, instantiate, read_source
from apsq.kernels.cabi import Entry, doubles, scalar, tensor, threads, u8_flag
from apsq.kernels.plan import Plan
from apsq.kernels.steps import powers_of_two, reciprocals_exact, step_arrays

__all__ = ["available", "build_error", "isa", "library", "GEMM_ISAS", "IntOperands", "int_operands", "forward",
           "backward", "ZB_BYTES"]


_PASS_LAYOUTS = ((0, "tensor"), (1, "lanes"))
"""Instances of ``csrc/psum_gemm_pass.c``: ``CS`` = 0 one step per tile step (per tensor), 1 one per
tile step and output column (per channel)."""


def source() -> str:
    """The translation unit: the prologue, then per dtype the forward / step-gradient template once per
    step layout (:data:`_PASS_LAYOUTS`; the per-tensor instance keeps its step a broadcast scalar) and
    the dtype-generic body (entry points, correction, codes)."""
    template = read_source("psum_gemm_pass.c")
    passes = "".join(f"\n#define CS {cs}\n#define PASS(name) SUF(name##_{tag})\n{template}\n#undef CS\n#undef PASS\n"
                     for cs, tag in _PASS_LAYOUTS)
    return instantiate(read_source("psum_gemm.c"), passes + read_source("psum_gemm_body.c"))


def _bmn(a) -> int:
    return a["B"] * a["M"] * a["N"]


_KP = lambda a: a["n"] * a["te"]  # noqa: E731
_XA = lambda a: a["B"] * a["M"] * _KP(a)  # noqa: E731
_WB = lambda a: a["B"] * a["N"] * _KP(a)  # noqa: E731
_N = lambda a: a["N"]  # noqa: E731
_NS = lambda a: a["n"] * (a["N"] if a["cs"] else 1)  # noqa: E731  steps [n] or [n][N]
_ZB = lambda a: a["zrows"] * a["N"] * -(-a["n"] // 64)  # noqa: E731  one chunk's zero-gradient tile bits
_XF = lambda a: a["B"] * a["M"] * a["n"] * a["t"]  # noqa: E731
_WF = lambda a: a["B"] * a["N"] * a["n"] * a["t"]  # noqa: E731
_STEPS = [doubles("sd", _NS), doubles("si", _NS), scalar("cs", "long")]
_OPS = [tensor("xa", torch.int16, _XA), tensor("wb", torch.int16, _WB), scalar("B", "long"), scalar("M", "long"),
        scalar("N", "long"), scalar("n", "long"), scalar("te", "long")]
_PLAN = [scalar("apsq"), scalar("gs"), scalar("qn"), scalar("qp")]

ISA = Entry("apsq_gemm_isa", [], restype=ctypes.c_int, generic=False)
"""0 portable, 1 AVX-512 BW, 2 AVX-512 VNNI, 3 AVX2."""
FWD = Entry("apsq_gemm_fwd", [*_OPS, tensor("unit", "T", _N), *_STEPS, *_PLAN,
                              tensor("out", "T", _bmn), tensor("lb", "bad", _bmn, optional=True),
                              u8_flag("lb8", of="lb"), threads()], restype=ctypes.c_int)
"""Writes ``out [B, M, N]`` and, for apsq, ``lb [B, M, N]``; returns 0 when out of memory."""
BWD = Entry("apsq_gemm_bwd", [tensor("xf", "T", _XF), tensor("wf", "T", _WF), doubles("ix", lambda a: 1),
                              doubles("iw", lambda a: a["B"] * a["N"] if a["iw_rows"] else 1), scalar("iw_rows"),
                              scalar("B", "long"), scalar("M", "long"), scalar("N", "long"), scalar("n", "long"),
                              scalar("te", "long"), tensor("unit", "T", _N), *_STEPS, *_PLAN,
                              tensor("g", "T", _bmn), tensor("lb", "bad", _bmn, optional=True),
                              u8_flag("lb8", of="lb"), tensor("gsc", torch.float64, _NS),
                              tensor("zb", torch.int64, _ZB), scalar("zrows", "long"), scalar("t", "long"),
                              tensor("gx", "T", _XF, optional=True), tensor("gw", "T", _WF, optional=True),
                              threads()], restype=ctypes.c_long)
"""Step gradients ``gsc [n]`` (``[n][N]`` when ``cs``, per-channel steps) and, in place, the correction of
``gx`` / ``gw`` at the outputs with a zero-gradient tile, chunk by chunk of ``zrows`` rows whose tile bits
go to the scratch ``zb [zrows, N, ceil(n / 64)]``; the operand codes are packed from the float operands
``xf`` / ``wf`` and their inverse steps. Returns the number of such outputs, -1 when out of memory, -2 when
an operand is not a code."""
CODES = Entry("apsq_codes16", [tensor("src", "T", lambda a: a["R"] * a["K"]), scalar("R", "long"), scalar("K", "long"),
                               scalar("tile", "long"), scalar("te", "long"),
                               doubles("inv_step", lambda a: a["R"] if a["per_row"] else 1), scalar("per_row"),
                               tensor("dst", torch.int16, lambda a: a["R"] * -(-a["K"] // a["tile"]) * a["te"]),
                               threads()], restype=ctypes.c_long)
"""int16 codes of ``src [R, K] * inv_step`` per tile; returns the largest magnitude, -1 when inexact."""
MR = Entry("apsq_gemm_mr", [], restype=ctypes.c_int, generic=False)
"""Rows of the kernel's output block: the backward's chunks of rows are multiples of it."""


def _declare(lib) -> None:
    for entry in (ISA, MR, FWD, BWD, CODES):
        entry.declare(lib)


GEMM_ISAS = {"native": [], "avx512bw": ["-mno-avx512vnni"], "avx2": ["-mno-avx512f"], "portable": ["-DAPSQ_PORTABLE"]}
"""Builds of the kernel: what ``-march=native`` gives (AVX-512 VNNI here), AVX-512 BW without VNNI
(``vpmaddwd`` + add), AVX2 (``vpmaddwd`` on 256 bits), and the plain-C micro-kernel (any CPU, about
20x slower). :attr:`apsq.kernels.options.Options.isa` picks one (default ``native``); the tests run
all four. Left to itself (``native``), the integer path is used only where the build has a SIMD
micro-kernel: on a CPU with neither AVX-512 nor AVX2 the float-tile path is faster."""

_LIBS = {name: LazyLibrary("psum_gemm", source, _declare, flags) for name, flags in GEMM_ISAS.items()}


def library(variant: str | None = None):
    """The loaded kernel build ``variant`` (:data:`GEMM_ISAS`; default: the current option), None if it
    does not build."""
    return _LIBS[options.current().isa if variant is None else variant].get()


def available() -> bool:
    """True when the fused integer kernel compiled (or was cached) and loaded."""
    return library() is not None


def build_error() -> str | None:
    """Why the kernel is unavailable (None when it is available)."""
    library()
    return _LIBS[options.current().isa].error


def isa() -> str:
    """The micro-kernel in use: ``avx512-vnni``, ``avx512-bw``, ``avx2`` or ``portable``."""
    lib = library()
    return ("portable", "avx512-bw", "avx512-vnni", "avx2")[ISA(lib)] if lib is not None else "unavailable"


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
    steps = step.detach().to(device="cpu", dtype=torch.float64).reshape(-1)  # a tensor: no Python floats
    if not reciprocals_exact(steps, v.dtype):
        return None
    _, inv = step_arrays(steps)
    out = torch.empty(rows, -(-k // tile) * te, dtype=torch.int16)
    mx = CODES(library(), src=v, R=rows, K=k, tile=tile, te=te, inv_step=inv, per_row=int(len(steps) > 1),
               dst=out)
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
    if isa() == "portable" and options.current().isa == "native":  # no SIMD here: the float-tile path is faster
        return None
    if x2.shape[0] % batch or w.shape[0] % batch:
        return None
    sx = x_step.detach().to(torch.float64).reshape(-1)
    sw = w_step.detach().to(torch.float64).reshape(-1)
    n_out = w.shape[0] // batch
    if sx.numel() != 1 or sw.numel() not in (1, n_out):
        return None
    if not (powers_of_two(sx) and powers_of_two(sw)):
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


def _plan_args(plan: Plan) -> dict:
    return {"apsq": int(plan.apsq), "gs": plan.gs, "qn": plan.qn, "qp": plan.qp}


def _ops_args(ops: IntOperands, plan: Plan) -> dict:
    b, m, n_out = ops.dims
    return {"xa": ops.xa, "wb": ops.wb, "B": b, "M": m, "N": n_out, "n": plan.n, "te": ops.te, "unit": ops.unit}


def _column_stride(ops: IntOperands, s: list[float] | torch.Tensor, plan: Plan) -> int:
    """0 for per-tensor steps (``s`` has ``n`` values), 1 for per-channel steps (``n * N`` values, row-major
    ``[n][N]``: step ``i`` of output column ``o`` at ``i * N + o``); anything else is a ValueError."""
    n_out = ops.dims[2]
    if len(s) == plan.n:
        return 0
    if len(s) == plan.n * n_out:
        return 1
    raise ValueError(f"PSUM steps: need {plan.n} (per tensor) or {plan.n} x {n_out} (per channel) values, got {len(s)}")


def forward(ops: IntOperands, s: list[float] | torch.Tensor, plan: Plan, out: torch.Tensor,
            last_bad: torch.Tensor | None) -> None:
    """Writes the accumulated output ``out [B, M, N]`` and, for apsq, ``last_bad [B, M, N]`` (contiguous).
    ``s``: the PSUM steps, ``n`` (per tensor) or ``n * N`` (per channel, row-major ``[n][N]``) floats, as a
    list or a 1-D float64 tensor."""
    cs = _column_stride(ops, s, plan)
    sd, si = step_arrays(s)
    _ok(FWD(library(), **_ops_args(ops, plan), sd=sd, si=si, cs=cs, **_plan_args(plan), out=out, lb=last_bad))


ZB_BYTES = 1 << 20
"""Scratch for the zero-gradient tile bits of one chunk of rows in :func:`backward` (at least one block of
rows): the bits of all outputs (8 bytes per output and 64 tiles, more than the float output) never exist
together (issue 26 A: that record had raised every layer's peak memory)."""


def _chunk_rows(m: int, n_out: int, words: int) -> int:
    """Rows per chunk of the backward: a multiple of the kernel's block rows within :data:`ZB_BYTES`, or all ``m``."""
    mr = MR(library())
    rows = max(mr, ZB_BYTES // (8 * n_out * words) // mr * mr)
    return min(m, rows)


def backward(xp: torch.Tensor, wp: torch.Tensor, batch: int, tile: int, x_step: torch.Tensor, w_step: torch.Tensor,
             s: list[float] | torch.Tensor, plan: Plan, g: torch.Tensor, last_bad: torch.Tensor | None,
             gxp: torch.Tensor | None, gwp: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Step-size gradients (float64 ``[n]``, or ``[n, N]`` for per-channel steps ``s``; summed in an order
    that depends neither on the thread count nor on the chunking) and the number of outputs with a
    zero-gradient tile; in place, removes from ``gxp [B*M, n*t]`` / ``gwp [B*N, n*t]`` (``g @ W`` /
    ``g^T @ x`` per product, either may be None) the terms of those tiles.

    ``xp [B*M, n*t]`` / ``wp [B*N, n*t]``: the operands of a forward that took the integer path
    (:func:`int_operands` accepted them with ``x_step`` / ``w_step``), zero-padded to ``n * tile`` columns,
    contiguous; the kernel packs their codes itself (no int16 copy). ``g [B, M, N]`` contiguous. The
    kernel walks the rows in chunks (:data:`ZB_BYTES` of tile bits at a time), correcting each chunk at
    once. Raises RuntimeError when an operand is not a code (it changed since the forward)."""
    m, n_out = xp.shape[0] // batch, wp.shape[0] // batch
    sx = x_step.detach().to(torch.float64).reshape(-1)
    sw = w_step.detach().to(torch.float64).reshape(-1).expand(n_out)
    per_row = not bool((sw == sw[0]).all())
    iw = torch.reciprocal(sw.repeat(batch) if per_row else sw[:1]).contiguous()
    cs = 1 if len(s) == plan.n * n_out else 0
    if not cs and len(s) != plan.n:
        raise ValueError(f"PSUM steps: need {plan.n} (per tensor) or {plan.n} x {n_out} (per channel) values, got {len(s)}")
    grad_s = torch.empty((plan.n, n_out) if cs else (plan.n,), dtype=torch.float64)
    words = -(-plan.n // 64)
    rows = _chunk_rows(m, n_out, words)
    zb = torch.empty(rows, n_out, words, dtype=torch.int64)
    sd, si = step_arrays(s)
    flagged = BWD(library(), xf=xp, wf=wp, ix=[1.0 / float(sx[0])], iw=iw, iw_rows=int(per_row), B=batch, M=m,
                  N=n_out, n=plan.n, te=tile + tile % 2, unit=(sx * sw).to(xp.dtype).contiguous(), sd=sd, si=si,
                  cs=cs, **_plan_args(plan), g=g, lb=last_bad, gsc=grad_s, zb=zb, zrows=rows, t=tile, gx=gxp, gw=gwp)
    if flagged == -2:
        raise RuntimeError("the integer PSUM path lost its operands between forward and backward")
    if flagged < 0:
        raise MemoryError("the fused PSUM kernel could not allocate its packed operands")
    return grad_s, int(flagged)
