"""The fused PSUM chunk kernel in C, compiled with the system C compiler on first use (ctypes).

One pass per chunk: for a block of output elements the kernel walks the n tile steps in order and
keeps the running values in registers / L1, instead of one torch op (one memory pass) per step.
It needs no Python or torch headers — only ``cc`` — and builds in well under a second; the shared
object is cached in ``$APSQ_CACHE_DIR`` (default ``~/.cache/apsq``) under a hash of the source, the
compiler and the CPU. Without a working compiler :func:`available` is False and
:mod:`apsq.psum.fused` uses its vectorised-torch kernels (same results).

Exactness: compiled with ``-O3 -fno-fast-math -ffp-contract=off`` (plus ``-fno-trapping-math``,
which lets ``floor`` vectorise and changes no result) so every ``+`` and ``*`` is one
IEEE operation in the tensor's precision, in the reference's order. The steps are powers of two, so
``x * (1/s)`` is the same correctly rounded number as the reference's ``x / s`` whenever ``1/s`` is
representable (checked by the caller; otherwise it uses the torch kernels). Step-size gradients are
accumulated in double.
"""

from __future__ import annotations

import ctypes

import torch

from apsq._cbuild import LazyLibrary, dtype_suffix, reciprocals_exact, step_arrays

__all__ = ["available", "build_error", "forward", "backward", "reciprocals_exact", "SOURCE"]

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLK 512

static inline long lmin(long a, long b) { return a < b ? a : b; }

static inline void bad_load(int16_t *dst, const void *lb, int lb8, long e0, long be) {
    if (lb8) { const uint8_t *src = (const uint8_t *)lb + e0; for (long k = 0; k < be; k++) dst[k] = src[k]; }
    else { const int16_t *src = (const int16_t *)lb + e0; for (long k = 0; k < be; k++) dst[k] = src[k]; }
}
static inline void bad_store(void *lb, int lb8, long e0, long be, const int16_t *src) {
    if (lb8) { uint8_t *dst = (uint8_t *)lb + e0; for (long k = 0; k < be; k++) dst[k] = (uint8_t)src[k]; }
    else { int16_t *dst = (int16_t *)lb + e0; for (long k = 0; k < be; k++) dst[k] = src[k]; }
}
/* Sum of t[0..be) with 16 independent double accumulators (vectorisable, no reassociation). */
static inline double block_sum(const double *t, long be) {
    double part[16] = {0};
    long k = 0;
    for (; k + 16 <= be; k += 16)
        for (int q = 0; q < 16; q++) part[q] += t[k + q];
    for (; k < be; k++) part[0] += t[k];
    double s = 0.0;
    for (int q = 0; q < 16; q++) s += part[q];
    return s;
}

#define DEFINE_KERNELS(T, FLOOR, SUF)                                                                 \
void apsq_fwd_##SUF(const T *p, long n, long E, const double *sd, const double *si, int apsq, int gs,  \
                    int qn, int qp, T *out, void *lb, int lb8, int nthreads) {                        \
    long nblk = (E + BLK - 1) / BLK;                                                                  \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                               \
    for (long b = 0; b < nblk; b++) {                                                                 \
        long e0 = b * BLK, be = lmin(BLK, E - e0);                                                    \
        T acc[BLK], pend[BLK];                                                                        \
        int16_t bad[BLK];                                                                             \
        const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5;                                              \
        if (!apsq) {                                                                                  \
            for (long i = 0; i < n; i++) {                                                            \
                const T s = (T)sd[i], is = (T)si[i];                                                           \
                const T *row = p + i * E + e0;                                                        \
                for (long k = 0; k < be; k++) {                                                       \
                    T r = FLOOR(row[k] * is + half);                                                   \
                    r = r < fqn ? fqn : (r > fqp ? fqp : r);                                          \
                    T q = r * s;                                                                      \
                    acc[k] = i == 0 ? q : acc[k] + q;                                                 \
                }                                                                                     \
            }                                                                                         \
            memcpy(out + e0, acc, be * sizeof(T));                                                    \
            continue;                                                                                 \
        }                                                                                             \
        memset(bad, 0, sizeof(bad));                                                                  \
        int h = 0;                                                                                    \
        for (long g0 = 0; g0 < n; g0 += gs, h++) {                                                    \
            long l = lmin(g0 + gs, n) - 1;                                                            \
            for (long j = g0; j < l; j++) {                                                           \
                const T s = (T)sd[j], is = (T)si[j];                                                           \
                const T *row = p + j * E + e0;                                                        \
                for (long k = 0; k < be; k++) {                                                       \
                    T r = FLOOR(row[k] * is + half);                                                   \
                    r = r < fqn ? fqn : (r > fqp ? fqp : r);                                          \
                    T q = r * s;                                                                      \
                    pend[k] = j == g0 ? q : pend[k] + q;                                              \
                }                                                                                     \
            }                                                                                         \
            const T s = (T)sd[l], is = (T)si[l];                                                               \
            const T *row = p + l * E + e0;                                                            \
            const int hp = l > g0, ha = h > 0;                                                        \
            for (long k = 0; k < be; k++) {                                                           \
                T v = row[k];                                                                         \
                if (hp) v = v + pend[k];                                                              \
                if (ha) v = v + acc[k];                                                               \
                T r = FLOOR(v * is + half);                                                            \
                if (r < fqn || r > fqp) bad[k] = (int16_t)(h + 1);                                    \
                r = r < fqn ? fqn : (r > fqp ? fqp : r);                                              \
                acc[k] = r * s;                                                                       \
            }                                                                                         \
        }                                                                                             \
        memcpy(out + e0, acc, be * sizeof(T));                                                        \
        bad_store(lb, lb8, e0, be, bad);                                                              \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
void apsq_bwd_##SUF(const T *p, long n, long E, const double *sd, const double *si, int apsq, int gs,  \
                    int qn, int qp, const T *g, const void *lb, int lb8, T *gp, double *gsc,          \
                    uint8_t *flag, int nthreads) {                                                    \
    long nblk = (E + BLK - 1) / BLK;                                                                  \
    memset(gsc, 0, n * sizeof(double));                                                               \
    _Pragma("omp parallel num_threads(nthreads)")                                                    \
    {                                                                                                 \
    double loc[n];                                                                                    \
    memset(loc, 0, n * sizeof(double));                                                               \
    _Pragma("omp for schedule(static)")                                                               \
    for (long b = 0; b < nblk; b++) {                                                                 \
        long e0 = b * BLK, be = lmin(BLK, E - e0);                                                    \
        T acc[BLK], pend[BLK], gv[BLK], ga[BLK];                                                      \
        double tb[BLK];                                                                               \
        int16_t bb[BLK];                                                                              \
        uint8_t fl[BLK];                                                                              \
        const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5, zero = (T)0;                                 \
        const T *gb = g + e0;                                                                         \
        memset(fl, 0, sizeof(fl));                                                                    \
        if (!apsq) {                                                                                  \
            for (long i = 0; i < n; i++) {                                                            \
                const T s = (T)sd[i], is = (T)si[i];                                                           \
                const T *row = p + i * E + e0;                                                        \
                T *grow = gp ? gp + i * E + e0 : 0;                                                   \
                for (long k = 0; k < be; k++) {                                                       \
                    T u = row[k] * is;                                                               \
                    T r = FLOOR(u + half);                                                            \
                    int m = r >= fqn && r <= fqp;                                                     \
                    T c = r < fqn ? fqn : (r > fqp ? fqp : r);                                        \
                    if (gp) grow[k] = m ? gb[k] : zero;                                               \
                    fl[k] |= (uint8_t)!m;                                                             \
                    tb[k] = (double)gb[k] * ((double)c - (m ? (double)u : 0.0));                      \
                }                                                                                     \
                loc[i] += block_sum(tb, be);                                                          \
            }                                                                                         \
            if (flag) memcpy(flag + e0, fl, be);                                                      \
            continue;                                                                                 \
        }                                                                                             \
        bad_load(bb, lb, lb8, e0, be);                                                                \
        for (long k = 0; k < be; k++) fl[k] = bb[k] != 0;                                             \
        int h = 0;                                                                                    \
        for (long g0 = 0; g0 < n; g0 += gs, h++) {                                                    \
            long l = lmin(g0 + gs, n) - 1;                                                            \
            for (long k = 0; k < be; k++) {                                                           \
                gv[k] = bb[k] <= h ? gb[k] : zero;                                                    \
                ga[k] = bb[k] <= h + 1 ? gb[k] : zero;                                                \
            }                                                                                         \
            for (long j = g0; j < l; j++) {                                                           \
                const T s = (T)sd[j], is = (T)si[j];                                                           \
                const T *row = p + j * E + e0;                                                        \
                T *grow = gp ? gp + j * E + e0 : 0;                                                   \
                for (long k = 0; k < be; k++) {                                                       \
                    T u = row[k] * is;                                                               \
                    T r = FLOOR(u + half);                                                            \
                    int m = r >= fqn && r <= fqp;                                                     \
                    T c = r < fqn ? fqn : (r > fqp ? fqp : r);                                        \
                    if (gp) grow[k] = m ? gv[k] : zero;                                               \
                    fl[k] |= (uint8_t)!m;                                                             \
                    tb[k] = (double)gv[k] * ((double)c - (m ? (double)u : 0.0));                      \
                    T q = c * s;                                                                      \
                    pend[k] = j == g0 ? q : pend[k] + q;                                              \
                }                                                                                     \
                loc[j] += block_sum(tb, be);                                                          \
            }                                                                                         \
            const T s = (T)sd[l], is = (T)si[l];                                                               \
            const T *row = p + l * E + e0;                                                            \
            T *grow = gp ? gp + l * E + e0 : 0;                                                       \
            const int hp = l > g0, ha = h > 0;                                                        \
            for (long k = 0; k < be; k++) {                                                           \
                T v = row[k];                                                                         \
                if (hp) v = v + pend[k];                                                              \
                if (ha) v = v + acc[k];                                                               \
                T u = v * is;                                                                        \
                T r = FLOOR(u + half);                                                                \
                int m = r >= fqn && r <= fqp;                                                         \
                T c = r < fqn ? fqn : (r > fqp ? fqp : r);                                            \
                if (gp) grow[k] = gv[k];                                                              \
                tb[k] = (double)ga[k] * ((double)c - (m ? (double)u : 0.0));                          \
                acc[k] = c * s;                                                                       \
            }                                                                                         \
            loc[l] += block_sum(tb, be);                                                              \
        }                                                                                             \
        if (flag) memcpy(flag + e0, fl, be);                                                          \
    }                                                                                                 \
    _Pragma("omp critical")                                                                          \
    for (long i = 0; i < n; i++) gsc[i] += loc[i];                                                    \
    }                                                                                                 \
}

DEFINE_KERNELS(float, floorf, f32)
DEFINE_KERNELS(double, floor, f64)
"""

_LIB = LazyLibrary("psum_kernel", lambda: SOURCE, lambda lib: _declare(lib))


def _declare(lib: ctypes.CDLL) -> None:
    vp, lg, it = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for suf in ("f32", "f64"):
        f = getattr(lib, f"apsq_fwd_{suf}")
        f.argtypes = [vp, lg, lg, vp, vp, it, it, it, it, vp, vp, it, it]
        f.restype = None
        b = getattr(lib, f"apsq_bwd_{suf}")
        b.argtypes = [vp, lg, lg, vp, vp, it, it, it, it, vp, vp, it, vp, vp, vp, it]
        b.restype = None


def _build() -> ctypes.CDLL:
    """Compile (or load from the cache) and declare; raises RuntimeError when it cannot."""
    return _LIB.build()


def _load() -> ctypes.CDLL | None:
    return _LIB.get()


def available() -> bool:
    """True when the kernel compiled (or was cached) and loaded."""
    return _load() is not None


def build_error() -> str | None:
    """Why the kernel is unavailable (None when it is available or not yet tried)."""
    _load()
    return _LIB.error


def _check_out(t: torch.Tensor | None, numel: int, dtype: torch.dtype) -> torch.Tensor:
    if t is None:
        return torch.empty(numel, dtype=dtype)
    if not t.is_contiguous() or t.numel() != numel or t.dtype != dtype:
        raise ValueError(f"output buffer must be contiguous {dtype} with {numel} elements")
    return t


def forward(
    p: torch.Tensor, s: list[float], plan, out: torch.Tensor | None = None, last_bad: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunk forward: ``p [n, E]`` tile partial sums -> output ``[E]`` and ``last_bad [E]`` (apsq).

    ``out`` / ``last_bad``: optional contiguous buffers to write into (e.g. rows of the layer output).
    """
    lib = _load()
    p = p.contiguous()
    n, e = p.shape
    out = _check_out(out, e, p.dtype)
    apsq = plan.mode == "apsq"
    lb = _check_out(last_bad, e, plan.bad_dtype) if apsq else None
    sd, si = step_arrays(s)
    getattr(lib, f"apsq_fwd_{dtype_suffix(p.dtype)}")(
        p.data_ptr(), n, e, sd, si, int(apsq), plan.gs, plan.qn, plan.qp, out.data_ptr(),
        lb.data_ptr() if lb is not None else None, int(plan.bad_dtype == torch.uint8), torch.get_num_threads(),
    )
    return out, lb


def backward(
    p: torch.Tensor, s: list[float], g: torch.Tensor, last_bad: torch.Tensor | None, plan,
    grad_p: torch.Tensor | None = None, flag: torch.Tensor | None = None, write_grad_p: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Chunk backward: gradient to ``p [n, E]`` and to the n steps (float64 ``[n]``).

    ``grad_p``: optional contiguous ``[n, E]`` buffer for the gradient (may be ``p`` itself: each
    element is read before it is written). ``write_grad_p=False`` skips it (returns None for it).
    ``flag``: optional contiguous uint8 ``[E]`` buffer, set to 1 where some tile's gradient is not
    the output gradient itself (a tile or a later closing step saturated), else 0.
    """
    lib = _load()
    p = p.contiguous()
    g = g.to(p.dtype).contiguous()
    n, e = p.shape
    if not write_grad_p:
        grad_p = None
    elif grad_p is None:
        grad_p = torch.empty_like(p)
    else:
        grad_p = _check_out(grad_p.view(-1), n * e, p.dtype).view(n, e)
    if flag is not None:
        flag = _check_out(flag, e, torch.uint8)
    grad_s = torch.empty(n, dtype=torch.float64)
    apsq = plan.mode == "apsq"
    if apsq:
        last_bad = last_bad.contiguous()
    sd, si = step_arrays(s)
    getattr(lib, f"apsq_bwd_{dtype_suffix(p.dtype)}")(
        p.data_ptr(), n, e, sd, si, int(apsq), plan.gs, plan.qn, plan.qp, g.data_ptr(),
        last_bad.data_ptr() if apsq else None, int(plan.bad_dtype == torch.uint8),
        None if grad_p is None else grad_p.data_ptr(), grad_s.data_ptr(),
        None if flag is None else flag.data_ptr(), torch.get_num_threads(),
    )
    return grad_p, grad_s
