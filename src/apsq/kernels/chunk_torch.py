"""The PSUM chunk kernels in vectorised torch: the twin of :mod:`apsq.kernels.chunk` (same values).

``p`` is a scratch ``[n, E]`` tensor holding a chunk's tile partial sums (it is overwritten); ``s``
holds the n steps as python floats, ``scol`` as an ``[n, 1]`` tensor of p's dtype; ``plan`` is an
:class:`apsq.kernels.plan.Plan`. ``psq`` quantizes all tiles in one op; ``apsq`` a group's pending
tiles in one op, then its closing step — the reference's operations in the reference's order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["forward", "backward"]

Observer = Callable[[torch.Tensor, torch.Tensor], None]


def _quantize_(v: torch.Tensor, s: torch.Tensor | float, qn: int, qp: int) -> torch.Tensor:
    """In place: ``v <- s * clamp(floor(v/s + 1/2), qn, qp)`` (the reference's op order)."""
    return v.div_(s).add_(0.5).floor_().clamp_(qn, qp).mul_(s)


def _pending_sum_(q: torch.Tensor) -> torch.Tensor:
    """``((q_0 + q_1) + q_2) + ...`` accumulated into ``q[0]`` (the reference's order)."""
    for k in range(1, q.shape[0]):
        q[0].add_(q[k])
    return q[0]


def forward(
    p: torch.Tensor, s: list[float], scol: torch.Tensor, plan, observe: Observer | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunk forward (``p [n, E]`` consumed): output ``[E]`` and, for apsq, ``last_bad [E]`` (else None).
    ``observe(value, step)`` sees every value that gets quantized (saturation statistics)."""
    qn, qp = plan.qn, plan.qp
    if plan.mode == "psq":
        if observe is not None:
            observe(p.clone(), scol)
        _quantize_(p, scol, qn, qp)
        return _pending_sum_(p), None
    last_bad = torch.zeros(p.shape[1], dtype=plan.bad_dtype)
    acc = None
    for h, (j0, l) in enumerate(plan.groups):
        v = p[l]
        if l > j0:
            pj = p[j0:l]
            if observe is not None:
                observe(pj.clone(), scol[j0:l])
            v.add_(_pending_sum_(_quantize_(pj, scol[j0:l], qn, qp)))
        if acc is not None:
            v.add_(acc)
        if observe is not None:
            observe(v.clone(), scol[l, 0])
        v.div_(s[l]).add_(0.5).floor_()
        last_bad.masked_fill_((v < qn) | (v > qp), h + 1)
        acc = v.clamp_(qn, qp).mul_(s[l])
    assert acc is not None  # a plan has at least one group
    return acc, last_bad


def _lsq_parts(
    u: torch.Tensor, qn: int, qp: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From ``u = x/s`` (consumed): in-range mask ``m``, code ``c`` and the LSQ term ``c - m*u``."""
    c = torch.add(u, 0.5).floor_()
    m = (c >= qn) & (c <= qp)
    c.clamp_(qn, qp)
    term = torch.sub(c, u.mul_(m))
    return m, c, term


def backward(
    p: torch.Tensor, s: list[float], scol: torch.Tensor, g: torch.Tensor, last_bad: torch.Tensor | None, plan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk backward (``p [n, E]`` consumed): gradient to the tiles ``[n, E]`` and to the n steps."""
    qn, qp = plan.qn, plan.qp
    if plan.mode == "psq":
        m, _, term = _lsq_parts(p.div_(scol), qn, qp)
        return m * g, term @ g
    assert last_bad is not None  # apsq's forward returned it
    grad_p = torch.empty_like(p)
    grad_s = torch.zeros(plan.n, dtype=p.dtype)
    acc = None
    for h, (j0, l) in enumerate(plan.groups):
        gv = torch.where(last_bad <= h, g, 0.0)  # gradient reaching v_h (and A_{h-1})
        ga = torch.where(last_bad <= h + 1, g, 0.0)  # gradient reaching A_h
        v = p[l]
        if l > j0:
            sj = scol[j0:l]
            m, c, term = _lsq_parts(p[j0:l].div_(sj), qn, qp)
            torch.mul(m, gv, out=grad_p[j0:l])
            grad_s[j0:l] = term @ gv
            v.add_(_pending_sum_(c.mul_(sj)))
        if acc is not None:
            v.add_(acc)
        m, c, term = _lsq_parts(v.div_(s[l]), qn, qp)
        grad_p[l] = gv
        grad_s[l] = term @ ga
        acc = c.mul_(s[l])
    return grad_p, grad_s
