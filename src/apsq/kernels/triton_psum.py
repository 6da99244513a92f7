"""Triton PSUM GEMM: integer tile products and the PSUM recurrence in registers (GPU, or CPU interpreter).

``gemm_psum(x3 [B, M, K], w3 [B, N, K], scales, tile, plan, x_step, w_step) -> y [B, M, N]`` computes
``y[b] = PSUM-accumulate(x3[b] @ w3[b].T tiles)`` exactly as the reference loop
:func:`apsq.psum.accumulate.psum_accumulate` does on the tile partial sums of
:func:`apsq.psum.tiling.linear_partials` (``docs/apsq-method.md`` sections 3 and 4), forward and
backward, without the ``[n, M, N]`` partial-sum tensor:

* **Tile products** (section 4, "the hardware's view"): the fake-quantized operands are turned into
  their integer codes ``cx = x / x_step``, ``cw = w / w_step`` (int8 when every code fits, else int16)
  and every K-block of ``tile`` elements is one integer ``tl.dot`` (int8 x int8 -> int32, what the PE
  array computes; int16 codes take an exact int32 outer-product loop). ``Tp_i = c_i * unit`` with
  ``unit[o] = x_step * w_step[o]`` is exact, hence equal to the reference's float matmul, whenever
  ``max|cx| * max|cw| * tile <= 2^24`` (float32; ``2^31 - 1`` for float64) — the same condition as
  :func:`apsq.kernels.int_gemm.int_operands`. Otherwise :func:`gemm_psum` returns None (caller falls back).
* **Recurrence** (section 3) per output element in registers, in the reference's order and precision:
  ``u = v * (1/s)`` (== ``v / s``: the steps are powers of two with exact reciprocals),
  ``floor(u + 1/2)`` (round half up), clamp to ``[-2^(b-1), 2^(b-1) - 1]`` (saturate), ``q = code * s``;
  psq sums ``q`` tile by tile; apsq keeps a group's pending sum and closes the group with
  ``A_h = Q(Tp_l + pending + A_{h-1})``. The kernels are compiled without FMA contraction (it could
  not change a result anyway: every product it would fuse, ``c * unit``, ``v * (1/s)``, ``code * s``,
  is exact). ``none`` accumulates the int32 products and scales once (exact INT32 accumulation).
* **Backward** (STE + LSQ, as :mod:`apsq.psum.fused` documents): the forward stores one small integer
  per output, ``last_bad`` = 1 + the last group whose closing step saturated (0 if none). The gradient
  reaching tile ``i`` of output ``(m, o)`` is ``g * mask_i`` with ``mask_i`` rebuilt from the tile's own
  product and ``last_bad`` only (psq: tile in range; apsq closing tile of group ``h``:
  ``last_bad <= h``; pending tile: that and in range), so ``grad_x`` and ``grad_w`` are masked GEMMs per
  tile (one program per row block and tile, looping over the other operand). The LSQ step gradients
  ``dL/ds_i = sum g_i (code - m u)`` re-run the recurrence and are summed in float64 per block, then
  over blocks. Unscaled, as the reference (the modules apply LSQ's gradient scaling).

Steps: ``scales`` is ``[n]`` (one PSUM step per tile) or ``[n, N]`` (one per tile and output column;
any ``[n, ...]`` layout of those ``n x N`` steps, e.g. a Conv2d's ``[n, Co, 1, 1]``);
``x_step`` one power of two; ``w_step`` one, or one per row of ``w3[b]`` (``[N]``). float32 / float64
operands compute in their dtype; bfloat16 / float16 ones (codes of <= 8 bits are exact there) compute
in float32 and the output is rounded once to the operands' dtype; their operand gradients are GEMMs
in that dtype with float32 accumulation (what autocast's matmul does). float32 operand gradients are
IEEE float32 GEMMs, or TF32 ones where ``torch.backends.cuda.matmul.allow_tf32`` lets torch's own
matmuls use TF32. Operand codes are made (and checked) in chunks of rows: 16 MiB of temporaries.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``; slow, for
tests). The kernels are JIT-compiled on first use for the interpreter setting of that moment, so the
variable may be set after this module is imported. Importing this module never needs a GPU or Triton;
:func:`gemm_psum` raises ImportError when Triton is not installed (``pip install -e '.[gpu]'``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from apsq.errors import APSQError, check_int
from apsq.kernels.autograd import first_order_only
from apsq.kernels.steps import is_power_of_two

try:  # Triton is optional: the [gpu] extra
    import triton
    import triton.language as tl
except ImportError as _err:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None
    _IMPORT_ERROR: ImportError | None = _err
else:
    _IMPORT_ERROR = None

__all__ = ["MAX_PROGRAMS", "TritonOperands", "available", "gemm_psum", "interpreting", "launch_grid", "program_coords"]

_MODES = {"none": 0, "psq": 1, "apsq": 2}
_LOWP = (torch.bfloat16, torch.float16)
_DTYPES = (torch.float32, torch.float64, *_LOWP)


class _PlanLike(Protocol):  # read-only members: a frozen Plan satisfies it
    @property
    def mode(self) -> str: ...
    @property
    def n(self) -> int: ...
    @property
    def gs(self) -> int: ...
    @property
    def bits(self) -> int: ...


def available() -> bool:
    """True when Triton imports (the kernels can run on CUDA, or on the CPU under the interpreter)."""
    return triton is not None


def interpreting() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1``): the kernels run on CPU tensors."""
    _require_triton()
    return bool(triton.knobs.runtime.interpret)


def _require_triton() -> None:
    if triton is None:
        raise ImportError(
            "apsq's Triton kernels need the 'triton' package (>= 3.9): pip install -e '.[gpu]' "
            f"(import failed: {_IMPORT_ERROR})")


# --------------------------------------------------------------------------------------------------
# Kernels. Plain functions, JIT-compiled lazily (see _kernel) so that TRITON_INTERPRET is read at
# first use. Each is self-contained (a kernel may only call other jitted functions).
# Shared arguments: xc [B, M, K], wc [B, N, K] operand codes (int8 or int16, contiguous); unit [N]
# (compute dtype); sp, ip: PSUM steps and their reciprocals, element (i, o) at i * s_si + o * s_sn;
# qn, qp code range; MODE 0 none / 1 psq / 2 apsq; WIDE: int16 codes (int32 outer-product loop);
# TP: the tile padded to a power of two >= 32 (the tl.dot depth); BM, BN: output block.
# --------------------------------------------------------------------------------------------------
def _fwd_kernel(xc, wc, unit, sp, ip, out, bad, M, N, K, n, gs, tile, s_si, s_sn, qn, qp, G1, G2,
                MODE: tl.constexpr, WIDE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                TP: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # (product, row block, column block) on one axis: launch_grid
    pb = pid // (G1 * G2)
    rm = (pid // G2 % G1) * BM + tl.arange(0, BM)
    rn = (pid % G2) * BN + tl.arange(0, BN)
    rk = tl.arange(0, TP)
    mm = rm < M
    nm = rn < N
    xrow = xc + pb * M * K + rm * K
    wrow = wc + pb * N * K + rn * K
    un = tl.load(unit + rn, mask=nm, other=0.0)
    acc = tl.full([BM, BN], 0, dtype=un.dtype)
    pend = tl.full([BM, BN], 0, dtype=un.dtype)
    isum = tl.full([BM, BN], 0, dtype=tl.int32)
    lb = tl.full([BM, BN], 0, dtype=tl.int32)
    for i in range(n):
        k0 = i * tile
        if WIDE:
            c = tl.full([BM, BN], 0, dtype=tl.int32)
            for kq in range(tile):
                kin = tl.full([1], k0 + kq, dtype=tl.int32) < K
                a = tl.load(xrow + k0 + kq, mask=mm & kin, other=0).to(tl.int32)
                b = tl.load(wrow + k0 + kq, mask=nm & kin, other=0).to(tl.int32)
                c += a[:, None] * b[None, :]
        else:
            kk = k0 + rk
            km = (rk < tile) & (kk < K)
            a = tl.load(xrow[:, None] + kk[None, :], mask=mm[:, None] & km[None, :], other=0)
            b = tl.load(wrow[:, None] + kk[None, :], mask=nm[:, None] & km[None, :], other=0)
            c = tl.dot(a, tl.trans(b))
        if MODE == 0:
            isum += c
        else:
            tp = c.to(un.dtype) * un[None, :]
            s = tl.load(sp + i * s_si + rn * s_sn, mask=nm, other=1.0)[None, :]
            inv = tl.load(ip + i * s_si + rn * s_sn, mask=nm, other=1.0)[None, :]
            if MODE == 1:
                x = tl.floor(tp * inv + 0.5)
                x = tl.minimum(tl.maximum(x, qn), qp)
                acc = acc + x * s
            else:
                closing = ((i + 1) % gs == 0) | (i == n - 1)
                v = tl.where(closing, (tp + pend) + acc, tp)
                x = tl.floor(v * inv + 0.5)
                sat = (x < qn) | (x > qp)
                x = tl.minimum(tl.maximum(x, qn), qp)
                q = x * s
                lb = tl.where(sat & closing, i // gs + 1, lb)
                acc = tl.where(closing, q, acc)
                pend = tl.where(closing, 0.0, pend + q)
    if MODE == 0:
        acc = isum.to(un.dtype) * un[None, :]
    offs = pb * M * N + rm[:, None] * N + rn[None, :]
    om = mm[:, None] & nm[None, :]
    tl.store(out + offs, acc.to(out.dtype.element_ty), mask=om)
    if MODE == 2:
        tl.store(bad + offs, lb.to(bad.dtype.element_ty), mask=om)


def _bwd_operand_kernel(xc, wc, of, unit, sp, ip, g, bad, go, M, N, K, n, gs, tile, s_si, s_sn, qn, qp, G1, G2,
                        MODE: tl.constexpr, WIDE: tl.constexpr, LOWP: tl.constexpr, FOR_W: tl.constexpr,
                        PREC: tl.constexpr, BR: tl.constexpr, BL: tl.constexpr, TP: tl.constexpr):
    """One program: the gradient of a block of BR rows of one operand (x when not FOR_W, else w) over
    tile ``i``, looping over the other operand's rows in blocks of BL ((product, row block, tile) on one
    grid axis: launch_grid). ``of`` is the other operand (float), ``go`` the gradient being written
    ([B, M, K] or [B, N, K])."""
    pid = tl.program_id(0).to(tl.int64)
    pb = pid // (G1 * G2)
    rr = (pid // G2 % G1) * BR + tl.arange(0, BR)
    i = (pid % G2).to(tl.int32)
    rk = tl.arange(0, TP)
    k0 = i * tile
    kk = k0 + rk
    km = (rk < tile) & (kk < K)
    if FOR_W:
        R = N
        L = M
        own = wc + pb * N * K
        oth = xc + pb * M * K
        ofb = of + pb * M * K
    else:
        R = M
        L = N
        own = xc + pb * M * K
        oth = wc + pb * N * K
        ofb = of + pb * N * K
    rmask = rr < R
    a = tl.load(own + rr[:, None] * K + kk[None, :], mask=rmask[:, None] & km[None, :], other=0)
    closing = ((i + 1) % gs == 0) | (i == n - 1)
    h = i // gs
    ct = unit.dtype.element_ty
    gacc = tl.full([BR, TP], 0, dtype=ct)
    for l0 in range(0, L, BL):
        rl = l0 + tl.arange(0, BL).to(tl.int64)
        lmask = rl < L
        if FOR_W:  # the [BL (m), BR (o)] block of outputs
            rm = rl
            rn = rr
            mm = lmask
            nm = rmask
        else:  # the [BR (m), BL (o)] block
            rm = rr
            rn = rl
            mm = rmask
            nm = lmask
        om = mm[:, None] & nm[None, :]
        gg = tl.load(g + pb * M * N + rm[:, None] * N + rn[None, :], mask=om, other=0.0).to(ct)
        if MODE == 0:
            keep = om
        else:
            if WIDE:
                c = om.to(tl.int32) * 0  # zeros of the block's shape (whatever g holds)
                for kq in range(tile):
                    kin = tl.full([1], k0 + kq, dtype=tl.int32) < K
                    av = tl.load(xc + pb * M * K + rm * K + k0 + kq, mask=mm & kin, other=0).to(tl.int32)
                    bv = tl.load(wc + pb * N * K + rn * K + k0 + kq, mask=nm & kin, other=0).to(tl.int32)
                    c += av[:, None] * bv[None, :]
            else:
                b = tl.load(oth + rl[:, None] * K + kk[None, :], mask=lmask[:, None] & km[None, :], other=0)
                if FOR_W:
                    c = tl.dot(b, tl.trans(a))
                else:
                    c = tl.dot(a, tl.trans(b))
            un = tl.load(unit + rn, mask=nm, other=0.0)
            inv = tl.load(ip + i * s_si + rn * s_sn, mask=nm, other=1.0)[None, :]
            x = tl.floor((c.to(un.dtype) * un[None, :]) * inv + 0.5)
            inr = (x >= qn) & (x <= qp)
            if MODE == 1:
                keep = inr
            else:
                lb = tl.load(bad + pb * M * N + rm[:, None] * N + rn[None, :], mask=om, other=0).to(tl.int32)
                keep = (lb <= h) & (inr | closing)
            keep = keep & om
        gm = tl.where(keep, gg, 0.0)
        ov = tl.load(ofb + rl[:, None] * K + kk[None, :], mask=lmask[:, None] & km[None, :], other=0.0)
        if FOR_W:
            gm = tl.trans(gm)  # [BR (o), BL (m)]
        if LOWP:
            gacc += tl.dot(gm.to(ov.dtype), ov)
        else:
            gacc += tl.dot(gm, ov.to(gm.dtype), input_precision=PREC)
    dst = go + pb * R * K + rr[:, None] * K + kk[None, :]
    tl.store(dst, gacc.to(go.dtype.element_ty), mask=rmask[:, None] & km[None, :])


def _bwd_steps_kernel(xc, wc, unit, sp, ip, g, bad, part, M, N, K, n, gs, tile, s_si, s_sn, qn, qp, n_mb, n_nb,
                      MODE: tl.constexpr, WIDE: tl.constexpr, PER_CH: tl.constexpr, SUM_DOT: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, TP: tl.constexpr):
    """LSQ step gradients of one output block, float64: ``part[b, mb, i, o]`` (PER_CH) or
    ``part[b, mb, nb, i]``; ``dL/ds_i = sum g_i * (code - m * u)`` with ``g_i`` the gradient reaching
    step i's quantizer (psq: g; apsq pending tile of group h: g if last_bad <= h; closing: g if
    last_bad <= h + 1)."""
    pid = tl.program_id(0).to(tl.int64)  # (product, row block, column block) on one axis: launch_grid
    pb = pid // (n_mb * n_nb)
    pm = pid // n_nb % n_mb
    pn = pid % n_nb
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, TP)
    mm = rm < M
    nm = rn < N
    om = mm[:, None] & nm[None, :]
    xrow = xc + pb * M * K + rm * K
    wrow = wc + pb * N * K + rn * K
    un = tl.load(unit + rn, mask=nm, other=0.0)
    offs = pb * M * N + rm[:, None] * N + rn[None, :]
    gg = tl.load(g + offs, mask=om, other=0.0).to(un.dtype)
    if MODE == 2:
        lb = tl.load(bad + offs, mask=om, other=0).to(tl.int32)
    acc = tl.full([BM, BN], 0, dtype=un.dtype)
    pend = tl.full([BM, BN], 0, dtype=un.dtype)
    # SUM_DOT (the interpreter): sums over a block's rows / columns as dots with ones, since tl.sum is
    # a jitted helper that fails there when triton was imported before TRITON_INTERPRET was set
    r16 = tl.arange(0, 16)
    ones_m = tl.full([16, BM], 1.0, dtype=tl.float64)
    ones_n = tl.full([BN, 16], 1.0, dtype=tl.float64)
    for i in range(n):
        k0 = i * tile
        if WIDE:
            c = tl.full([BM, BN], 0, dtype=tl.int32)
            for kq in range(tile):
                kin = tl.full([1], k0 + kq, dtype=tl.int32) < K
                a = tl.load(xrow + k0 + kq, mask=mm & kin, other=0).to(tl.int32)
                b = tl.load(wrow + k0 + kq, mask=nm & kin, other=0).to(tl.int32)
                c += a[:, None] * b[None, :]
        else:
            kk = k0 + rk
            km = (rk < tile) & (kk < K)
            a = tl.load(xrow[:, None] + kk[None, :], mask=mm[:, None] & km[None, :], other=0)
            b = tl.load(wrow[:, None] + kk[None, :], mask=nm[:, None] & km[None, :], other=0)
            c = tl.dot(a, tl.trans(b))
        tp = c.to(un.dtype) * un[None, :]
        s = tl.load(sp + i * s_si + rn * s_sn, mask=nm, other=1.0)[None, :]
        inv = tl.load(ip + i * s_si + rn * s_sn, mask=nm, other=1.0)[None, :]
        if MODE == 1:
            u = tp * inv
            gi = gg
        else:
            closing = ((i + 1) % gs == 0) | (i == n - 1)
            h = i // gs
            v = tl.where(closing, (tp + pend) + acc, tp)
            u = v * inv
            gi = tl.where(lb <= tl.where(closing, h + 1, h), gg, 0.0)
        x = tl.floor(u + 0.5)
        inr = (x >= qn) & (x <= qp)
        x = tl.minimum(tl.maximum(x, qn), qp)
        q = x * s
        if MODE == 2:
            acc = tl.where(closing, q, acc)
            pend = tl.where(closing, 0.0, pend + q)
        d = (x - tl.where(inr, u, 0.0)).to(tl.float64)  # exact: |code - u| <= 1/2 in range (Sterbenz)
        term = tl.where(om, gi.to(tl.float64) * d, 0.0)
        if SUM_DOT:
            colsum = tl.dot(ones_m, term, input_precision="ieee")  # [16, BN], every row the column sums
            if PER_CH:
                tl.store(part + ((pb * n_mb + pm) * n + i) * N + r16[:, None] * 0 + rn[None, :], colsum,
                         mask=(r16 == 0)[:, None] & nm[None, :])
            else:
                total = tl.dot(colsum, ones_n, input_precision="ieee")  # [16, 16], each the block's sum
                tl.store(part + ((pb * n_mb + pm) * n_nb + pn) * n + i + r16[:, None] * 0 + r16[None, :] * 0,
                         total, mask=(r16 == 0)[:, None] & (r16 == 0)[None, :])
        else:
            colsum = tl.sum(term, axis=0)
            if PER_CH:
                tl.store(part + ((pb * n_mb + pm) * n + i) * N + rn, colsum, mask=nm)
            else:
                tl.store(part + ((pb * n_mb + pm) * n_nb + pn) * n + i, tl.sum(colsum, axis=0))


_BODIES = {"fwd": _fwd_kernel, "bwd_operand": _bwd_operand_kernel, "bwd_steps": _bwd_steps_kernel}
_JIT: dict[tuple[str, bool], Any] = {}


def _kernel(name: str) -> Any:
    """The jitted kernel ``name`` for the current interpreter setting (compiled once per setting)."""
    key = (name, interpreting())
    if key not in _JIT:
        _JIT[key] = triton.jit(_BODIES[name])
    return _JIT[key]


# --------------------------------------------------------------------------------------------------
# Host side.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TritonOperands:
    """What the kernels read: codes ``xc [B, M, K]``, ``wc [B, N, K]`` (int8, or int16 when ``wide``),
    ``unit [N]`` (value of one code product per output column, compute dtype), PSUM steps ``s`` and
    reciprocals ``inv`` (``[n, N]`` strided views; stride 0 over columns for per-tensor steps)."""

    xc: torch.Tensor
    wc: torch.Tensor
    unit: torch.Tensor
    s: torch.Tensor | None
    inv: torch.Tensor | None
    wide: bool
    per_channel: bool


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exact_limit(dtype: torch.dtype) -> int:
    """Largest |integer| a tile sum may reach for the reference's float matmul to be exact."""
    return 2**31 - 1 if dtype == torch.float64 else 2**24


_CODE_CHUNK = 1 << 22
"""Elements converted to codes at a time: the float temporaries stay at 16 MiB whatever the operand."""


def _codes(t: torch.Tensor, row_steps: torch.Tensor, ct: torch.dtype,
           code_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, int] | None:
    """``t [..., K] / step`` as integer codes of ``t``'s shape, in chunks of rows.

    ``row_steps``: one step (``[1]``) or one per row of ``t.reshape(-1, K)``, in ``ct`` on ``t``'s device.
    With ``code_dtype`` (backward: the forward checked these operands) the codes are written in that
    dtype unchecked, and the magnitude is not computed (returned as -1). Without it, returns the codes
    (int8 if every one fits, else int16) and the largest magnitude, or None unless every quotient is
    an integer of magnitude <= 32767 (NaN / Inf are not). Division by a power of two is exact.
    """
    rows = t.detach().reshape(-1, t.shape[-1])
    r, k = rows.shape
    check = code_dtype is None
    out = torch.empty(r, k, dtype=torch.int16 if check else code_dtype, device=t.device)
    ok = torch.ones((), dtype=torch.bool, device=t.device)
    lo = torch.zeros((), dtype=ct, device=t.device)
    hi = torch.zeros((), dtype=ct, device=t.device)
    per_row = row_steps.numel() > 1
    step = max(1, _CODE_CHUNK // k)
    for r0 in range(0, r, step):
        s = row_steps[r0 : r0 + step].reshape(-1, 1) if per_row else row_steps
        v = rows[r0 : r0 + step].to(ct) / s
        if check:
            ok &= ((v - torch.round(v)) == 0).all()  # integers; NaN and Inf fail (Inf - Inf is NaN)
            mn, mx = torch.aminmax(v)
            lo, hi = torch.minimum(lo, mn), torch.maximum(hi, mx)
            v.clamp_(-32768, 32767)
        out[r0 : r0 + step] = v
    if not check:
        return out.reshape(t.shape), -1
    if not bool(ok):
        return None
    lo_f, hi_f = float(lo), float(hi)
    mag = int(max(-lo_f, hi_f))
    if mag > 32767:
        return None
    if lo_f >= -128 and hi_f <= 127:
        out = out.to(torch.int8)
    return out.reshape(t.shape), mag


def _steps(scales: torch.Tensor | None, n: int, big_n: int, ct: torch.dtype, mode: str, device: torch.device):
    """Validated PSUM steps and exact reciprocals in ``ct`` as ``[n, N]`` views, or ``(None, None)``
    for ``none``; raises APSQError for a bad shape or a step that is not a power of two, returns
    ``False`` when a reciprocal is not exact in ``ct`` (the caller falls back)."""
    if mode == "none":
        return None, None
    if scales is None:
        raise APSQError(f"scales are required for mode={mode!r}")
    if scales.dim() < 1 or scales.shape[0] != n or scales.numel() not in (n, n * big_n):
        raise APSQError(f"scales must be [n] (one PSUM step per tile, n={n}) or [n, N] (one per tile and "
                        f"output column, N={big_n}; any [n, ...] holding n or n x N steps, such as "
                        f"[n, N, 1, 1], is read so), got shape {tuple(scales.shape)}")
    if not bool(is_power_of_two(scales).all()):
        bad = scales.detach()[~is_power_of_two(scales)][:4].tolist()
        raise APSQError(f"scales must be positive powers of two (2^e, integer e); got {bad}")
    sd = scales.detach().to(device, torch.float64)
    inv = 1.0 / sd
    s_c, inv_c = sd.to(ct), inv.to(ct)
    if not (bool(torch.isfinite(inv_c).all()) and bool((inv_c.to(torch.float64) == inv).all())
            and bool((s_c.to(torch.float64) == sd).all()) and bool((s_c > 0).all())):
        return False, False
    if scales.numel() == n:  # per tile step: stride 0 over the columns
        return s_c.reshape(n, 1).expand(n, big_n), inv_c.reshape(n, 1).expand(n, big_n)
    return s_c.reshape(n, big_n).contiguous(), inv_c.reshape(n, big_n).contiguous()


def triton_operands(x3: torch.Tensor, w3: torch.Tensor, scales: torch.Tensor | None, tile: int, plan: _PlanLike,
                    x_step: torch.Tensor | None, w_step: torch.Tensor | None) -> TritonOperands | None:
    """The kernels' operands, or None where the integer path would not equal the reference: steps
    missing or not powers of two (x_step one, w_step one or one per row of ``w3[b]``), operands of
    different or unsupported dtypes, codes that are not integers of at most 15 bits, a tile sum bound
    ``max|cx| max|cw| tile`` (``K`` for ``none``) above :func:`_exact_limit`, a unit or PSUM step whose
    reciprocal is not exact in the compute dtype."""
    if x_step is None or w_step is None or x3.dtype != w3.dtype or x3.dtype not in _DTYPES:
        return None
    b, _, k = x3.shape
    big_n = w3.shape[1]
    ct = _compute_dtype(x3.dtype)
    sx = x_step.detach().to(torch.float64).reshape(-1)
    sw = w_step.detach().to(torch.float64).reshape(-1)
    if sx.numel() != 1 or sw.numel() not in (1, big_n):
        return None
    if not (bool(is_power_of_two(sx).all()) and bool(is_power_of_two(sw).all())):
        return None
    s, inv = _steps(scales, plan.n, big_n, ct, plan.mode, x3.device)
    if s is False:
        return None
    dev = x3.device
    cx = _codes(x3, sx.to(dev, ct), ct)
    if cx is None:
        return None
    cw = _codes(w3, sw.to(dev, ct).repeat(b) if sw.numel() > 1 else sw.to(dev, ct), ct)
    if cw is None:
        return None
    depth = k if plan.mode == "none" else tile
    limit = _exact_limit(ct)
    if cx[1] * cw[1] * depth > limit:
        return None
    unit = (sx * sw).expand(big_n)
    info = torch.finfo(ct)
    if float(unit.min()) < info.tiny or float(unit.max()) * limit > info.max:
        return None
    wide = cx[0].dtype != torch.int8 or cw[0].dtype != torch.int8
    xc, wc = (cx[0], cw[0]) if not wide else (cx[0].to(torch.int16), cw[0].to(torch.int16))
    return TritonOperands(xc.contiguous(), wc.contiguous(), unit.to(dev, ct).contiguous(),
                          s, inv, wide, s is not None and s.stride(1) != 0)


def _recodes(x3, w3, ops_meta, x_step, w_step) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward's codes again (backward; the operands are unchanged, so no checks)."""
    wide, ct = ops_meta
    sx = x_step.detach().to(x3.device, ct).reshape(-1)
    sw = w_step.detach().to(w3.device, ct).reshape(-1)
    code = torch.int16 if wide else torch.int8
    xr = _codes(x3, sx, ct, code)
    wr = _codes(w3, sw.repeat(w3.shape[0]) if sw.numel() > 1 else sw, ct, code)
    assert xr is not None and wr is not None  # with a code dtype the codes are written unchecked (never None)
    return xr[0], wr[0]


_LAUNCH = {"num_warps": 4, "enable_fp_fusion": False}
"""Launch options: no FMA contraction (each rounding as in the reference; the interpreter ignores them)."""


MAX_PROGRAMS = 2**31 - 1
"""Programs a CUDA grid's axis 0 holds (axes 1 and 2 hold 65,535 only)."""


def launch_grid(b: int, g1: int, g2: int) -> tuple[int]:
    """The launch grid of ``b x g1 x g2`` programs (products x row blocks x column blocks or tiles) as one
    flat axis 0: the kernels decode ``pid`` as :func:`program_coords` does. Rows or tiles on CUDA's
    axes 1 / 2 (limit 65,535) refused inputs of >= 4.19 M rows that ``nn.Linear`` takes (issue 25 item
    7); axis 0 holds 2^31 - 1. Raises APSQError beyond that (about 140 G rows at 64-row blocks)."""
    total = b * g1 * g2
    if total > MAX_PROGRAMS:
        raise APSQError(f"the Triton launch needs {b} x {g1} x {g2} = {total} programs, more than a CUDA grid "
                        f"holds ({MAX_PROGRAMS}); split the input into several calls")
    return (max(total, 1),)


def program_coords(pid: int, g1: int, g2: int) -> tuple[int, int, int]:
    """``(product, block 1, block 2)`` of program ``pid`` of :func:`launch_grid` (what the kernels compute)."""
    return pid // (g1 * g2), pid // g2 % g1, pid % g2


def _block(interp: bool) -> int:
    return 16 if interp else 64


def _operand_block(tp: int, ct: torch.dtype) -> int:
    """Row blocks of the operand-gradient kernels: 64 while ``TP`` x the element size is at most 256
    bytes (float32 tiles up to 64 deep, float64 up to 32: at most 131 KB of shared memory in the sm_90
    compile), else 32 (float64 at TP = 128 would need 240 KB at 64, more than an H100 / H200 SM has;
    at 32, float64 TP = 256 needs 164 KB; tests/kernels/test_triton_compile.py)."""
    if interpreting():
        return _block(True)
    return 32 if tp * torch.finfo(ct).bits // 8 > 256 else 64


def _max_depth(ct: torch.dtype) -> int:
    """Deepest padded tile the operand-gradient kernel fits in an H100 / H200 SM's shared memory (at
    32-row blocks, sm_90 compile: float32 TP = 512 needs 172 KB, float64 TP = 256 164 KB; twice that
    would not fit). Deeper tiles (few tile steps) take the caller's fallback."""
    return 256 if ct == torch.float64 else 512


def _tile_depth(tile: int) -> int:
    return max(32, 1 << (tile - 1).bit_length())


def _store_dtype(dtype: torch.dtype, ct: torch.dtype) -> torch.dtype:
    """What a kernel writes: ``dtype`` itself, except bf16 / fp16 under the interpreter, whose float32 ->
    bf16 conversion truncates (the GPU's rounds to nearest even, as torch): there the kernel writes the
    compute dtype and torch rounds."""
    return ct if dtype in _LOWP and interpreting() else dtype


def _bad_dtype(plan: _PlanLike) -> torch.dtype:
    return torch.uint8 if math.ceil(plan.n / plan.gs) < 255 else torch.int16


def _qrange(plan: _PlanLike) -> tuple[float, float]:
    return float(-(1 << (plan.bits - 1))), float((1 << (plan.bits - 1)) - 1)


def _step_args(ops: TritonOperands, dev: torch.device, ct: torch.dtype):
    if ops.s is None:  # mode none: never read
        dummy = torch.ones(1, dtype=ct, device=dev)
        return dummy, dummy, 0, 0
    return ops.s, ops.inv, ops.s.stride(0), ops.s.stride(1)


def _forward(ops: TritonOperands, plan: _PlanLike, tile: int, out_dtype: torch.dtype):
    b, m, k = ops.xc.shape
    big_n = ops.wc.shape[1]
    dev = ops.xc.device
    out = torch.empty(b, m, big_n, dtype=_store_dtype(out_dtype, ops.unit.dtype), device=dev)
    apsq = plan.mode == "apsq"
    last_bad = torch.empty(b, m, big_n, dtype=_bad_dtype(plan), device=dev) if apsq else None
    sp, ip, s_si, s_sn = _step_args(ops, dev, ops.unit.dtype)
    blk = _block(interpreting())
    qn, qp = _qrange(plan)
    g1, g2 = triton.cdiv(m, blk), triton.cdiv(big_n, blk)
    _kernel("fwd")[launch_grid(b, g1, g2)](ops.xc, ops.wc, ops.unit, sp, ip, out, last_bad if apsq else out, m,
                                           big_n, k, plan.n, plan.gs, tile, s_si, s_sn, qn, qp, g1, g2, MODE=_MODES[plan.mode], WIDE=ops.wide, BM=blk, BN=blk,
                         TP=_tile_depth(tile), **_LAUNCH)
    return out.to(out_dtype), last_bad


def _backward(ops: TritonOperands, plan: _PlanLike, tile: int, x3, w3, g, last_bad, need):
    b, m, k = ops.xc.shape
    big_n = ops.wc.shape[1]
    dev = ops.xc.device
    ct = ops.unit.dtype
    sp, ip, s_si, s_sn = _step_args(ops, dev, ct)
    blk = _block(interpreting())
    qn, qp = _qrange(plan)
    mode = _MODES[plan.mode]
    # bf16 / fp16 operand gradients as GEMMs in that dtype (products exact, float32 accumulation) on
    # the GPU; the interpreter's low-precision dot is not usable, there they are float32 GEMMs of the
    # same (exactly converted) values: the same products, summed in float32
    lowp = x3.dtype in _LOWP and not interpreting()
    bad = last_bad if last_bad is not None else g
    # float32 operand gradients: TF32 where torch's matmuls may use it (allow_tf32), else IEEE float32
    tf32 = ct == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32
    ob = _operand_block(_tile_depth(tile), ct)
    common = dict(MODE=mode, WIDE=ops.wide, LOWP=lowp, PREC="tf32" if tf32 else "ieee", BR=ob, BL=ob,
                  TP=_tile_depth(tile))
    args = (m, big_n, k, plan.n, plan.gs, tile, s_si, s_sn, qn, qp)
    gx = gw = gsc = None
    kern = _kernel("bwd_operand")
    if need[0]:
        gx = torch.empty(b, m, k, dtype=_store_dtype(x3.dtype, ct), device=dev)
        g1 = triton.cdiv(m, ob)
        kern[launch_grid(b, g1, plan.n)](ops.xc, ops.wc, w3, ops.unit, sp, ip, g, bad, gx, *args, g1, plan.n,
                                          FOR_W=False, **common, **_LAUNCH)
    if need[1]:
        gw = torch.empty(b, big_n, k, dtype=_store_dtype(w3.dtype, ct), device=dev)
        g1 = triton.cdiv(big_n, ob)
        kern[launch_grid(b, g1, plan.n)](ops.xc, ops.wc, x3, ops.unit, sp, ip, g, bad, gw, *args, g1, plan.n,
                                          FOR_W=True, **common, **_LAUNCH)
    if need[2] and plan.mode != "none":
        n_mb, n_nb = triton.cdiv(m, blk), triton.cdiv(big_n, blk)
        shape = (b, n_mb, plan.n, big_n) if ops.per_channel else (b, n_mb, n_nb, plan.n)
        part = torch.zeros(shape, dtype=torch.float64, device=dev)
        _kernel("bwd_steps")[launch_grid(b, n_mb, n_nb)](ops.xc, ops.wc, ops.unit, sp, ip, g, bad, part, *args, n_mb, n_nb,
                                              MODE=mode, WIDE=ops.wide, PER_CH=ops.per_channel,
                                              SUM_DOT=interpreting(), BM=blk, BN=blk, TP=_tile_depth(tile),
                                              **_LAUNCH)
        gsc = part.sum((0, 1)) if ops.per_channel else part.sum((0, 1, 2))
    return (None if gx is None else gx.to(x3.dtype)), (None if gw is None else gw.to(w3.dtype)), gsc


class _GemmPsum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x3, w3, scales, tile: int, plan, steps, ops: TritonOperands):
        out, last_bad = _forward(ops, plan, tile, x3.dtype)
        ctx.tile, ctx.plan, ctx.steps = tile, plan, steps
        ctx.meta = (ops.wide, ops.unit.dtype)
        ctx.ops_rest = (ops.unit, ops.s, ops.inv, ops.per_channel)
        ctx.save_for_backward(x3, w3, scales, last_bad)
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):
        x3, w3, scales, last_bad = ctx.saved_tensors
        need = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        xc, wc = _recodes(x3, w3, ctx.meta, *ctx.steps)
        unit, s, inv, per_ch = ctx.ops_rest
        ops = TritonOperands(xc, wc, unit, s, inv, ctx.meta[0], per_ch)
        g = grad_out.contiguous()
        gx, gw, gsc = _backward(ops, ctx.plan, ctx.tile, x3.detach().contiguous(), w3.detach().contiguous(), g,
                                last_bad, need)
        if gsc is not None:
            gsc = gsc.reshape(scales.shape).to(scales.device, scales.dtype)
        return gx, gw, gsc, None, None, None, None


_WARNED_DEVICES: set[str] = set()


def _warn_not_runnable_once(device: torch.device) -> None:
    """One RuntimeWarning per process and device type: the Triton kernels were asked for (``APSQ_KERNELS=triton``
    routes every product here) on tensors Triton cannot run, so the caller's fallback (the reference loop)
    runs instead; before, that happened without a word."""
    if device.type in _WARNED_DEVICES:
        return
    _WARNED_DEVICES.add(device.type)
    warnings.warn(f"apsq: the Triton kernels cannot run {device.type} tensors without TRITON_INTERPRET=1 "
                  "(Triton's interpreter: slow, for tests); the reference loop runs instead (same values). "
                  "APSQ_KERNELS=auto uses the C kernels on the CPU", RuntimeWarning, stacklevel=4)


def gemm_psum(x3: torch.Tensor, w3: torch.Tensor, scales: torch.Tensor | None, tile: int, plan: _PlanLike,
              x_step: torch.Tensor | None, w_step: torch.Tensor | None) -> torch.Tensor | None:
    """PSUM-accumulated ``x3 [B, M, K] @ w3 [B, N, K]^T`` -> ``[B, M, N]`` in Triton, or None where the
    integer path would not equal the reference (see :func:`triton_operands`), Triton cannot run the
    tensors (not CUDA, and no ``TRITON_INTERPRET=1``) or the tile is deeper than :func:`_max_depth`
    (512; 256 for float64): the caller falls back.

    Args:
        x3, w3: fake-quantized operands (same dtype: float32, float64, bfloat16 or float16; same device).
            Linear: ``B = 1``; Conv2d: im2col rows (:func:`apsq.psum.tiling.conv2d_im2col`) as ``x3``;
            attention's ``QK^T`` / ``AV``: ``B`` = batch x heads.
        scales: PSUM steps, ``[n]`` or ``[n, N]`` powers of two (unused for ``none``); ``n = ceil(K / tile)``.
        tile: PE-array reduction depth (elements of K per step), >= 1.
        plan: ``apsq.psum.fused.Plan(mode, n, gs, bits)`` (any object with those attributes).
        x_step: the activation step (one power of two); w_step: one, or ``[N]`` (one per row of ``w3[b]``).

    Differentiable in ``x3``, ``w3`` and ``scales`` (STE, LSQ; unscaled step gradients).

    Raises:
        ImportError: Triton is not installed.
        APSQError: bad shapes, tile, plan or steps (not powers of two), more than 2^31 - 1 programs in a
            launch (:func:`launch_grid`).
    """
    _require_triton()
    if x3.dim() != 3 or w3.dim() != 3 or x3.shape[0] != w3.shape[0] or x3.shape[2] != w3.shape[2]:
        raise APSQError(f"gemm_psum needs x3 [B, M, K] and w3 [B, N, K] with the same B and K, got "
                        f"{tuple(x3.shape)} and {tuple(w3.shape)}")
    check_int("tile", tile, lo=1)
    mode = getattr(plan, "mode", None)
    if mode not in _MODES:
        raise APSQError(f"plan.mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    check_int("plan.gs", plan.gs, lo=1)
    check_int("plan.bits", plan.bits, lo=2, hi=16)
    k = x3.shape[2]
    if k < 1 or plan.n != math.ceil(k / tile):
        raise APSQError(f"plan.n must be ceil(K / tile) = ceil({k} / {tile}), got {plan.n}")
    if x3.device != w3.device:
        raise APSQError(f"x3 is on {x3.device} but w3 on {w3.device}; they must be on one device")
    if x3.device.type != "cuda" and not interpreting():  # Triton cannot run these: the caller's fallback
        _warn_not_runnable_once(x3.device)
        return None
    if x3.numel() == 0 or w3.numel() == 0:
        return None
    if _tile_depth(tile) > _max_depth(_compute_dtype(x3.dtype)):  # would not fit shared memory: fall back
        return None
    ops = triton_operands(x3, w3, scales, tile, plan, x_step, w_step)
    if ops is None:
        return None
    assert x_step is not None and w_step is not None  # triton_operands returns None without them
    steps = (x_step.detach(), w_step.detach())
    sc = scales if scales is not None else torch.zeros(0, dtype=x3.dtype, device=x3.device)
    return _GemmPsum.apply(x3, w3, sc, tile, plan, steps, ops)
