"""Fast, memory-light PSUM accumulation with a hand-written backward (the training path).

Computes exactly what :func:`apsq.psum.accumulate.psum_accumulate` (the reference loop) computes —
``docs/apsq-method.md`` section 3 — with the same gradients, but

* works on chunks of output rows (:attr:`apsq.kernels.options.Options.chunk_elements` partial sums at
  a time): each chunk's tile partial sums ``Tp_i`` come from one batched matmul into a reused buffer,
  so the ``[n, M, N]`` partial-sum tensor is never materialised (:func:`linear_psum`, :func:`conv2d_psum`);
* runs the recursive quantization of a chunk in one pass: a small C kernel (:mod:`apsq.kernels.chunk`,
  compiled with the system C compiler on first use and cached; it walks blocks of 512 elements
  through all n steps in L1) or, where none builds, vectorised torch (:mod:`apsq.kernels.chunk_torch`;
  psq: all tiles in one op; apsq: a group's pending tiles in one op, then its closing step);
* with the layer's operand steps, computes the tiles from integer codes inside the C kernel
  (:mod:`apsq.kernels.int_gemm`, via :mod:`apsq.kernels.int_gemm_fn`); on CUDA, the Triton kernels;
* saves for backward only the operands (the layer keeps them anyway) and, for apsq, one small
  integer per output element; the backward recomputes the partial sums chunk by chunk.

Gradients (the reference's autograd through ``Q_s(x) = clamp(floor_ste(x/s + 1/2), qn, qp) * s``):
with ``u = x/s``, ``r = floor(u + 1/2)``, in-range mask ``m = (qn <= r <= qp)``, code ``c = clamp(r)``
and the gradient ``g`` arriving at ``Q_s(x)``:

* ``dL/dx = g * m`` (straight-through inside the range, zero where clamped);
* ``dL/ds = sum(g * (c - m * u))`` — LSQ: ``round(u) - u`` in range, ``qn``/``qp`` when clamped.

For ``apsq`` the closing step of group ``h`` quantizes ``v_h = Tp_l + sum P_j + A_{h-1}``, so the
gradient reaching ``A_h`` is ``g_out * M_{h+1}`` with ``M_h = m_h * m_{h+1} * ... * m_{G-1}`` (every
later requantization in range; ``M_G = 1``) and the gradient reaching ``v_h`` (hence ``Tp_l``, every
pending ``P_j`` of the group and ``A_{h-1}``) is ``g_out * M_h``. ``M_h`` is stored as one integer per
element: ``last_bad`` = 1 + the last group whose closing step saturated (0 if none), ``M_h = last_bad
<= h``. A pending tile ``j`` of group ``h`` gets ``g_out * M_h * m_j``.

The backend is chosen once, by :func:`apsq.kernels.dispatch.route` (one ordered table, ``APSQ_KERNELS``);
this module keeps the public functions and runs the rows the table leaves to it: the tiles paths
``c`` / ``torch`` (its autograd Functions) and ``reference`` (the plain loop).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from apsq.errors import APSQError, check_int
from apsq.kernels import chunk as c_chunk
from apsq.kernels import chunk_torch, dispatch, options
from apsq.kernels.autograd import first_order_only
from apsq.kernels.plan import Plan
from apsq.psum.accumulate import psum_accumulate, validate_psum_args
from apsq.psum.tiling import conv2d_im2col, linear_partials, matmul_partials, num_tiles, pad_to_tiles

__all__ = [
    "psum_accumulate_fused",
    "linear_psum",
    "conv2d_psum",
    "matmul_psum",
    "Plan",
    "kernel_backend",
]

Observer = Callable[[torch.Tensor, torch.Tensor], None]


def kernel_backend() -> str:
    """The kernel backend forced here: ``options.override(backend=...)``, else ``$APSQ_KERNELS`` (default
    ``auto``; :func:`apsq.kernels.options.backend`).

    Programs that quantize late (``apsq train`` fine-tunes in full precision first) and ``quantize_``
    call it first, so that a bad value fails before any work or change, not at the first quantized step.

    Raises:
        APSQError: ``APSQ_KERNELS`` is not one of ``auto``, ``reference``, ``c``, ``torch``, ``triton``
            (the message names the variable and the allowed values), or it is ``c`` and the C kernels do
            not build (the message gives the build error; building them here is the first use's ~1 s).
    """
    chosen = options.backend()
    if chosen == "c":
        dispatch.c_backend()
    return chosen


def _validate(shape: tuple[int, ...], scales: torch.Tensor | None, mode: str, gs: int, bits: int) -> None:
    """:func:`apsq.psum.accumulate.validate_psum_args` for partials of ``shape`` ``[n, *out]`` that are
    never materialised (a zero-stride stand-in; no NaN/Inf scan)."""
    validate_psum_args(torch.zeros(()).expand(shape), scales, mode, gs, bits, finite=False)


def _psum_steps(scales: torch.Tensor | None, mode: str) -> torch.Tensor:
    """The PSUM steps of a ``psq`` / ``apsq`` accumulation (:func:`_validate` refuses ``None`` there first)."""
    if scales is None:
        raise APSQError(f"scales are required for mode={mode!r}")
    return scales


def _fwd_chunk(backend: str, p, s, scol, plan, observe):
    if backend == "c" and observe is None:
        return c_chunk.forward(p, s, plan)
    return chunk_torch.forward(p, s, scol, plan, observe)


def _bwd_chunk(backend: str, p, s, scol, g, last_bad, plan):
    if backend == "c":
        return c_chunk.backward(p, s, g, last_bad, plan)
    return chunk_torch.backward(p, s, scol, g, last_bad, plan)


def _steps(scales: torch.Tensor, dtype: torch.dtype) -> tuple[list[float], torch.Tensor]:
    sd = scales.detach().to(dtype)
    return sd.tolist(), sd.reshape(-1, 1)


def _chunk_elements() -> int:
    return options.current().chunk_elements


# --------------------------------------------------------------------------------------------------
# Partials-level accumulation: the same contract as the reference psum_accumulate.
# --------------------------------------------------------------------------------------------------
class _FusedAccumulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, partials, scales, plan: Plan, observe, backend: str):  # noqa: D102
        n = plan.n
        p2 = partials.detach().reshape(n, -1)
        s, scol = _steps(scales, partials.dtype)
        if backend == "c" and observe is None:  # the kernel blocks the elements itself, reads p2 only
            out, last_bad = _fwd_chunk(backend, p2.contiguous(), s, scol, plan, None)
        else:
            e = p2.shape[1]
            step = max(1, _chunk_elements() // n)
            out = torch.empty(e, dtype=partials.dtype)
            last_bad = None if plan.mode == "psq" else torch.empty(e, dtype=plan.bad_dtype)
            for e0 in range(0, e, step):
                y, lb = _fwd_chunk(backend, p2[:, e0 : e0 + step].clone(), s, scol, plan, observe)
                out[e0 : e0 + step] = y
                if last_bad is not None:
                    last_bad[e0 : e0 + step] = lb
        ctx.plan, ctx.backend = plan, backend
        ctx.save_for_backward(partials, scales, last_bad)
        return out.reshape(partials.shape[1:])

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):  # noqa: D102
        partials, scales, last_bad = ctx.saved_tensors
        plan, backend = ctx.plan, ctx.backend
        n = plan.n
        p2 = partials.detach().reshape(n, -1)
        g2 = grad_out.reshape(-1).to(partials.dtype).contiguous()
        s, scol = _steps(scales, partials.dtype)
        if backend == "c":
            grad_p, grad_s = _bwd_chunk(backend, p2.contiguous(), s, scol, g2, last_bad, plan)
        else:
            e = p2.shape[1]
            step = max(1, _chunk_elements() // n)
            grad_p = torch.empty_like(p2)
            grad_s = torch.zeros(n, dtype=torch.float64)
            for e0 in range(0, e, step):
                lb = None if last_bad is None else last_bad[e0 : e0 + step]
                gp, gsc = _bwd_chunk(backend, p2[:, e0 : e0 + step].clone(), s, scol, g2[e0 : e0 + step], lb, plan)
                grad_p[:, e0 : e0 + step] = gp
                grad_s += gsc.to(torch.float64)
        return grad_p.reshape(partials.shape), grad_s.to(scales.dtype), None, None, None


def psum_accumulate_fused(
    partials: torch.Tensor,
    scales: torch.Tensor | None = None,
    *,
    mode: str,
    gs: int = 1,
    bits: int = 8,
    observe: Observer | None = None,
) -> torch.Tensor:
    """Drop-in fast twin of :func:`apsq.psum.accumulate.psum_accumulate` (same arguments, values, gradients).

    Saves only ``partials`` (and for apsq one small integer per output element) for backward,
    instead of the reference's per-step float copies. Unlike the reference it does not scan
    ``partials`` for NaN/Inf (the quantized layers check their inputs).
    """
    validate_psum_args(partials, scales, mode, gs, bits, finite=False)
    if mode == "none":
        return partials.sum(0)
    steps = _psum_steps(scales, mode)
    plan = Plan(mode, partials.shape[0], gs, bits)
    backend, _ = dispatch.route(dispatch.Request("partials", partials, None, steps, 1, plan, observe))
    if backend in ("c", "torch"):
        return _FusedAccumulate.apply(partials, steps.to(partials.dtype), plan, observe, backend)
    return psum_accumulate(partials, steps, mode=mode, gs=gs, bits=bits, observe=observe)


# --------------------------------------------------------------------------------------------------
# Operand-level: y = PSUM-accumulate(x @ w.T tiles) without materialising [n, M, N].
# --------------------------------------------------------------------------------------------------
def _tiles(x2: torch.Tensor, w: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``xt [n, M, t]`` (a view) and ``wt [n, t, N]`` (contiguous: faster batched matmuls) of the padded operands."""
    n = num_tiles(x2.shape[-1], tile)
    xt = pad_to_tiles(x2, tile).reshape(-1, n, tile).transpose(0, 1)
    wt = pad_to_tiles(w, tile).reshape(w.shape[0], n, tile).permute(1, 2, 0).contiguous()
    return xt, wt


class _FusedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, w, scales, tile: int, plan: Plan, observe, backend: str):  # noqa: D102
        n, m_rows, big_n = plan.n, x2.shape[0], w.shape[0]
        s, scol = _steps(scales, x2.dtype)
        use_c = backend == "c" and observe is None
        out = torch.empty(m_rows, big_n, dtype=x2.dtype)
        last_bad = None if plan.mode == "psq" else torch.empty(m_rows, big_n, dtype=plan.bad_dtype)
        ctx.tile, ctx.plan, ctx.backend = tile, plan, backend
        ctx.save_for_backward(x2, w, scales, last_bad)
        xt, wt = _tiles(x2.detach(), w.detach(), tile)
        rows = max(1, _chunk_elements() // (n * big_n))
        buf = torch.empty(n * min(rows, m_rows) * big_n, dtype=x2.dtype)  # one chunk of tiles, reused
        for m0 in range(0, m_rows, rows):
            mc = min(rows, m_rows - m0)
            p = torch.bmm(xt[:, m0 : m0 + mc], wt, out=buf[: n * mc * big_n].view(n, mc, big_n))
            if use_c:
                c_chunk.forward(p.view(n, -1), s, plan, out=out[m0 : m0 + mc].view(-1),
                                 last_bad=None if last_bad is None else last_bad[m0 : m0 + mc].view(-1))
                continue
            y, lb = chunk_torch.forward(p.view(n, -1), s, scol, plan, observe)
            out[m0 : m0 + mc] = y.view(mc, big_n)
            if last_bad is not None and lb is not None:  # apsq: both
                last_bad[m0 : m0 + mc] = lb.view(mc, big_n)
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):  # noqa: D102
        x2, w, scales, last_bad = ctx.saved_tensors
        plan, backend, tile = ctx.plan, ctx.backend, ctx.tile
        n, m_rows, big_n, k = plan.n, x2.shape[0], w.shape[0], x2.shape[1]
        s, scol = _steps(scales, x2.dtype)
        g2 = grad_out.to(x2.dtype).contiguous()
        need = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        xt, wt = _tiles(x2.detach(), w.detach(), tile)
        rows = max(1, _chunk_elements() // (n * big_n))
        if backend == "c" and not _mostly_saturated(last_bad):
            xp, wp = pad_to_tiles(x2.detach(), tile), pad_to_tiles(w.detach(), tile)
            gxp, gwp, grad_s = _linear_backward_gemm(xt, wt, xp, wp, s, g2, last_bad, plan, rows, need)
            gx = gxp[:, :k] if need[0] else None
            gw = gwp[:, :k] if need[1] else None
            return gx, gw, grad_s.to(scales.dtype), None, None, None, None
        grads = _linear_backward_by_rows(xt, wt, s, scol, g2, last_bad, plan, backend, rows, need)
        gxt, gwt, grad_s = grads
        gx = gxt.transpose(0, 1).reshape(m_rows, n * tile)[:, :k] if need[0] else None
        gw = gwt.permute(2, 0, 1).reshape(big_n, n * tile)[:, :k] if need[1] else None
        return gx, gw, grad_s.to(scales.dtype), None, None, None, None


def _chunk_backward(p: torch.Tensor, s: list[float], scol: torch.Tensor, g: torch.Tensor, lb: torch.Tensor | None,
                    plan: Plan, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient to a chunk's tiles ``p [n, E]`` (in place for the C kernel) and to the steps."""
    if backend == "c":
        return _c_tile_grads(p, s, g, lb, plan, grad_p=p)
    return chunk_torch.backward(p, s, scol, g, lb, plan)


def _c_tile_grads(p: torch.Tensor, s: list[float], g: torch.Tensor, lb: torch.Tensor | None, plan: Plan,
                  grad_p: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The C kernel's gradient to the tiles ``p [n, E]`` (into ``grad_p`` when given) and to the steps."""
    gp, gsc = c_chunk.backward(p, s, g, lb, plan, grad_p=grad_p)
    if gp is None:  # only write_grad_p=False returns no tile gradients
        raise RuntimeError("the C backward kernel returned no tile gradients")
    return gp, gsc


SPARSE_FRACTION = 1 / 64
"""Largest fraction of a chunk's ``n x E`` tile gradients differing from ``g`` for which the
operand-gradient correction is gathered entry by entry (``index_add_``, ~60x the cost per entry of a
batched matmul on this machine); above it one dense batched matmul per operand is used."""


TILEWISE_FRACTION = 1 / 64
"""Above this fraction of apsq outputs with a saturated closing step (``last_bad != 0``) the
corrections would be dense in most chunks and cost more than the tile-wise operand matmuls, which
are used instead."""


def _mostly_saturated(last_bad: torch.Tensor | None) -> bool:
    return last_bad is not None and int(torch.count_nonzero(last_bad)) > TILEWISE_FRACTION * last_bad.numel()


def _linear_backward_gemm(xt, wt, xp, wp, s, g2, last_bad, plan, rows, need):
    """C-kernel backward: operand gradients as full GEMMs with ``g`` plus a correction for saturation.

    The gradient reaching tile ``i`` of output ``(m, o)`` is ``g[m, o] * mask_i[m, o]`` with mask 1
    unless a tile or a later closing step saturated, so ``grad_x = g @ W + sum_i D_i @ W_i`` and
    ``grad_W = g^T @ x + sum_i D_i^T @ x_i`` with ``D_i = g * (mask_i - 1)``, non-zero only where the
    kernel flags the element. The recomputed tiles are still needed (LSQ step gradients); the
    tile-wise operand matmuls are not. ``xp [M, n*t]``, ``wp [N, n*t]``: zero-padded operands.
    Returns ``grad_x [M, n*t]``, ``grad_W [N, n*t]`` (None where not needed), ``grad_s`` float64.
    """
    n, m_rows, tile = xt.shape
    big_n = wt.shape[2]
    gxp = torch.mm(g2, wp) if need[0] else None
    gwp = torch.mm(g2.t(), xp) if need[1] else None
    wr = wp.reshape(big_n * n, tile)  # row o*n + i: W[o, tile i]
    xr = xp.reshape(m_rows * n, tile)  # row m*n + i: x[m, tile i]
    wt_t = wt.transpose(1, 2)  # [n, N, t]
    grad_s = torch.zeros(n, dtype=torch.float64)
    buf = torch.empty(n * min(rows, m_rows) * big_n, dtype=xt.dtype)
    flag = torch.empty(min(rows, m_rows) * big_n, dtype=torch.uint8)
    gwt_corr = None  # dense corrections to grad_W in the tile layout [n, t, N]
    for m0 in range(0, m_rows, rows):
        mc = min(rows, m_rows - m0)
        e = mc * big_n
        xc = xt[:, m0 : m0 + mc]
        p = torch.bmm(xc, wt, out=buf[: n * e].view(n, mc, big_n)).view(n, e)
        lb = None if last_bad is None else last_bad[m0 : m0 + mc].reshape(-1)
        gc = g2[m0 : m0 + mc].reshape(-1)
        fl = flag[:e]
        _, gsc = c_chunk.backward(p, s, gc, lb, plan, flag=fl, write_grad_p=False)
        grad_s += gsc
        idx = fl.nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        # tile gradients of the flagged outputs only: the kernel again on their gathered tiles
        d, _ = _c_tile_grads(p.index_select(1, idx), s, gc[idx], None if lb is None else lb[idx], plan)
        d.sub_(gc[idx])  # [n, F]: D_i at the flagged outputs
        ti, fi = d.nonzero(as_tuple=True)
        if ti.numel() <= SPARSE_FRACTION * n * e:
            val = d[ti, fi].unsqueeze(1)
            row = torch.div(idx, big_n, rounding_mode="floor")
            r = (row[fi] + m0) * n + ti
            c = (idx - row * big_n)[fi] * n + ti
            if gxp is not None:
                gxp.view(m_rows * n, tile).index_add_(0, r, wr.index_select(0, c).mul_(val))
            if gwp is not None:
                gwp.view(big_n * n, tile).index_add_(0, c, xr.index_select(0, r).mul_(val))
            continue
        gp, _ = _c_tile_grads(p, s, gc, lb, plan, grad_p=p)
        dd = gp.sub_(gc).view(n, mc, big_n)  # D_i, dense
        if gxp is not None:
            gxp[m0 : m0 + mc].view(mc, n, tile).add_(torch.bmm(dd, wt_t).transpose(0, 1))
        if gwp is not None:
            if gwt_corr is None:
                gwt_corr = torch.zeros(n, tile, big_n, dtype=xt.dtype)
            gwt_corr.baddbmm_(xc.transpose(1, 2), dd)
    if gwt_corr is not None and gwp is not None:  # corrections exist only where grad_W is wanted
        gwp.view(big_n, n, tile).add_(gwt_corr.permute(2, 0, 1))
    return gxp, gwp, grad_s


def _linear_backward_by_rows(xt, wt, s, scol, g2, last_bad, plan, backend, rows, need):
    n, m_rows, tile = xt.shape
    big_n = wt.shape[2]
    gxt = torch.empty(n, m_rows, tile, dtype=xt.dtype) if need[0] else None
    gwt = torch.zeros(n, tile, big_n, dtype=xt.dtype) if need[1] else None
    wt_t = wt.transpose(1, 2)  # [n, N, t]
    grad_s = torch.zeros(n, dtype=torch.float64)
    buf = torch.empty(n * min(rows, m_rows) * big_n, dtype=xt.dtype)
    for m0 in range(0, m_rows, rows):
        mc = min(rows, m_rows - m0)
        xc = xt[:, m0 : m0 + mc]
        p = torch.bmm(xc, wt, out=buf[: n * mc * big_n].view(n, mc, big_n))
        lb = None if last_bad is None else last_bad[m0 : m0 + mc].reshape(-1)
        gp, gsc = _chunk_backward(p.view(n, -1), s, scol, g2[m0 : m0 + mc].reshape(-1), lb, plan, backend)
        grad_s += gsc.to(torch.float64)
        gp = gp.view(n, mc, big_n)
        if gxt is not None:
            torch.bmm(gp, wt_t, out=gxt[:, m0 : m0 + mc]) if mc == m_rows else gxt[:, m0 : m0 + mc].copy_(
                torch.bmm(gp, wt_t))
        if gwt is not None:
            gwt.baddbmm_(xc.transpose(1, 2), gp)
    return gxt, gwt, grad_s


def _lane_steps(scales: torch.Tensor, n: int, n_out: int, trailing: int = 0) -> torch.Tensor | None:
    """Per-channel PSUM steps as ``[n, N]`` (a differentiable view) when ``scales`` is one step per tile
    step and output column: shape ``[n, 1, ..., 1, N, 1 x trailing]`` (``trailing`` = 2 for a conv's
    ``[n, Co, 1, 1]``); None for any other layout (the caller runs the reference, which broadcasts)."""
    shape = tuple(scales.shape)
    if len(shape) < 2 + trailing or shape[0] != n:
        return None
    lane = shape[len(shape) - 1 - trailing]
    if lane != n_out or any(d != 1 for d in shape[1 : len(shape) - 1 - trailing] + shape[len(shape) - trailing :]):
        return None
    return scales.reshape(n, n_out)


def _kernel_steps(scales: torch.Tensor, n: int, n_out: int) -> torch.Tensor:
    """The PSUM steps as the kernels take them: ``[n]`` per tensor, ``[n, N]`` per channel
    (:func:`_lane_steps`); any other per-channel layout as it is (only the reference then applies)."""
    if scales.dim() < 2:
        return scales
    lanes = _lane_steps(scales, n, n_out)
    return scales if lanes is None else lanes


def linear_psum(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor | None,
    tile: int,
    *,
    mode: str,
    gs: int = 1,
    bits: int = 8,
    observe: Observer | None = None,
    x_step: torch.Tensor | None = None,
    w_step: torch.Tensor | None = None,
) -> torch.Tensor:
    """``psum_accumulate(linear_partials(x, weight, tile), scales, ...)`` without the ``[n, ..., N]`` tensor.

    ``x``: ``[..., K]``, ``weight``: ``[N, K]`` (already fake-quantized operands) -> ``[..., N]``.
    Values equal the reference whenever the tile partial sums are computed exactly (quantized
    operands) — each chunk's tiles come from the same batched matmul as :func:`linear_partials`.
    ``x_step`` (one power of two) and ``w_step`` (one per output row, or one) are the steps the
    operands were quantized with: when given, and ``x / x_step``, ``weight / w_step`` are small
    integers (:func:`apsq.kernels.int_gemm.int_operands`), the tile products are computed from those
    codes inside the C kernel (:mod:`apsq.kernels.int_gemm_fn`; exact, so the same values; much faster).
    ``mode='none'`` is the plain ``F.linear`` (exact INT32 accumulation).
    """
    check_int("tile", tile, lo=1)
    if x.shape[-1] != weight.shape[-1]:
        raise APSQError(
            f"x has K={x.shape[-1]} input features but weight has K={weight.shape[-1]}; they must match"
        )
    n = num_tiles(x.shape[-1], tile)
    _validate((n, *x.shape[:-1], weight.shape[0]), scales, mode, gs, bits)
    if mode == "none":
        return F.linear(x, weight)
    steps = _psum_steps(scales, mode)
    plan = Plan(mode, n, gs, bits)
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    backend, y = dispatch.route(dispatch.Request("gemm", x2.unsqueeze(0), weight.unsqueeze(0),
                                                 _kernel_steps(steps, n, weight.shape[0]), tile, plan, observe,
                                                 x_step, w_step))
    if y is None and backend in ("c", "torch"):
        y = _FusedLinear.apply(x2, weight, steps.to(x.dtype), tile, plan, observe, backend)
    elif y is None:
        y = psum_accumulate(linear_partials(x2, weight, tile), steps, mode=mode, gs=gs, bits=bits, observe=observe)
    return y.reshape(*lead, weight.shape[0])


GROUP_LOOP_MAX = 16
"""Grouped convolutions with per-channel weight steps and at most this many groups run one product per
group (each through the integer kernel); more groups (depthwise) one batched product of float tiles."""


def conv2d_psum(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor | None,
    tile: int,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    *,
    mode: str,
    gs: int = 1,
    bits: int = 8,
    observe: Observer | None = None,
    x_step: torch.Tensor | None = None,
    w_step: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conv2d (no bias) with tiled PSUM accumulation: im2col rows through :func:`linear_psum`.

    The same reduction order as :func:`apsq.psum.tiling.conv2d_partials` (``(c, u, v)``); grouped
    convolutions accumulate each group separately. ``x_step`` / ``w_step`` (one, or one per output
    channel) as in :func:`linear_psum`. Returns ``[B, Co, Ho, Wo]``.
    """
    co, cig, kh, kw = weight.shape
    if x.dim() != 4 or x.shape[1] != cig * groups:
        raise APSQError(
            f"Conv2d input must be [B, {cig * groups}, H, W] (Ci = {cig} x groups {groups}), got {tuple(x.shape)}"
        )
    if mode == "none":  # the exact product, as linear_psum / matmul_psum
        _validate((num_tiles(cig * kh * kw, tile), 1), scales, mode, gs, bits)
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)
    lanes = None  # per-channel steps [n, Co] when they are one per tile step and output channel
    if scales is not None and scales.dim() >= 2:
        lanes = None if observe is not None else _lane_steps(scales, num_tiles(cig * kh * kw, tile), co, trailing=2)
        if lanes is None:  # another layout, or an observer: the reference loop on the whole conv
            from apsq.psum.tiling import conv2d_partials

            return psum_accumulate(conv2d_partials(x, weight, tile, stride, padding, dilation, groups), scales,
                                   mode=mode, gs=gs, bits=bits, observe=observe)
    cols, (h, w_out) = conv2d_im2col(x, (kh, kw), stride, padding, dilation)  # [B, G*Kg, L]
    b, _, length = cols.shape
    kg, cog = cig * kh * kw, co // groups
    cols = cols.reshape(b, groups, kg, length)
    wg = weight.reshape(groups, cog, kg)
    one_w_step = w_step is not None and w_step.numel() == 1
    if groups > 1 and lanes is None and observe is None and (one_w_step or groups > GROUP_LOOP_MAX):
        # every group in one batched product (per-tensor PSUM steps are shared by all groups), routed by
        # the table like attention's products: the per-group loop below costs one kernel call per group
        # (a depthwise conv: one per channel). The integer kernel / Triton take one weight step for the
        # batch (or one per row of a product): per-channel weight steps take the tiles of all groups.
        a = cols.permute(1, 0, 3, 2).reshape(groups, b * length, kg)
        plan = Plan(mode, num_tiles(kg, tile), gs, bits)
        steps = _psum_steps(scales, mode)
        backend, y = dispatch.route(dispatch.Request("gemm", a, wg, steps, tile, plan, None, x_step,
                                                     w_step if one_w_step else None))
        if y is None:
            parts = matmul_partials(a, wg.transpose(1, 2), tile)
            y = (_FusedAccumulate.apply(parts, steps.to(parts.dtype), plan, None, backend) if backend in ("c", "torch")
                 else psum_accumulate(parts, steps, mode=mode, gs=gs, bits=bits))
        return y.reshape(groups, b, length, cog).permute(1, 0, 3, 2).reshape(b, co, h, w_out)
    outs = []
    sw = None
    if w_step is not None and w_step.numel() in (1, co):
        sw = w_step.reshape(-1).expand(co).reshape(groups, cog)
    for gi in range(groups):
        rows = cols[:, gi].transpose(1, 2).reshape(b * length, kg)
        sc = scales if lanes is None else lanes[:, gi * cog : (gi + 1) * cog]
        outs.append(linear_psum(rows, wg[gi], sc, tile, mode=mode, gs=gs, bits=bits, observe=observe,
                                x_step=x_step, w_step=None if sw is None else sw[gi]))
    y = torch.stack(outs, 1) if groups > 1 else outs[0].unsqueeze(1)  # [B*L, G, Cog]
    return y.reshape(b, length, co).transpose(1, 2).reshape(b, co, h, w_out)


def matmul_psum(
    a: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor | None,
    tile: int,
    *,
    mode: str,
    gs: int = 1,
    bits: int = 8,
    observe: Observer | None = None,
    a_step: torch.Tensor | None = None,
    b_step: torch.Tensor | None = None,
) -> torch.Tensor:
    """``psum_accumulate(matmul_partials(a, b, tile), scales, ...)``: ``a [..., M, K] @ b [..., K, N]``
    (attention's ``QK^T`` / ``AV``) -> ``[..., M, N]``.

    With ``a_step`` / ``b_step`` (one power of two each) and exact codes, every product of the batch
    goes through the integer kernel (:mod:`apsq.kernels.int_gemm_fn`) or Triton without materialising the tiles;
    otherwise (or with broadcast batch dimensions) the tiles are materialised and accumulated by
    :func:`psum_accumulate_fused`. Same values as the reference either way.
    """
    check_int("tile", tile, lo=1)
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise APSQError(f"matmul operands must be [..., M, K] and [..., K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
    n = num_tiles(a.shape[-1], tile)
    lead, (m, k, n_out) = a.shape[:-2], (a.shape[-2], a.shape[-1], b.shape[-1])
    try:
        out_lead = torch.broadcast_shapes(lead, b.shape[:-2])
    except RuntimeError as exc:
        raise APSQError(f"matmul batch dimensions do not broadcast: {tuple(a.shape)} and {tuple(b.shape)}") from exc
    _validate((n, *out_lead, m, n_out), scales, mode, gs, bits)
    if mode == "none":
        return a @ b
    steps = _psum_steps(scales, mode)
    plan = Plan(mode, n, gs, bits)
    if b.shape[:-2] == lead:  # one product per batch entry: the operand routes (broadcast batches: partials)
        a3, b3 = a.reshape(-1, m, k), b.reshape(-1, k, n_out).transpose(1, 2)
        req = dispatch.Request("gemm", a3, b3, _kernel_steps(steps, n, n_out), tile, plan, observe, a_step, b_step)
    else:
        req = dispatch.Request("partials", a, None, steps, tile, plan, observe)
    backend, y = dispatch.route(req)
    if y is not None:
        return y.reshape(*lead, m, n_out)
    parts = matmul_partials(a, b, tile)
    if backend in ("c", "torch"):  # the tiles materialised, the chunk kernels on them
        return _FusedAccumulate.apply(parts, steps.to(parts.dtype), plan, observe, backend)
    return psum_accumulate(parts, steps, mode=mode, gs=gs, bits=bits, observe=observe)
