/* Tiled PSUM accumulation fused with its matmul, on integer operand codes.
 *
 * The W8A8 operands of a quantized layer are integer codes times power-of-two steps:
 * x[m, k] = cx[m, k] * sx and W[o, k] = cw[o, k] * sw[o]. The tile partial sum
 *     Tp_i[m, o] = sum_{k in tile i} x[m, k] W[o, k] = unit[o] * sum_{k in tile i} cx[m, k] cw[o, k]
 * (unit[o] = sx * sw[o]) is then an exact integer times a power of two: the caller checks that
 * |cx| max * |cw| max * tile fits the float mantissa, so the float matmul of the reference path
 * gives exactly this value in any summation order, and so does this kernel. Each `t`-deep tile
 * product is computed here in int16 x int16 -> int32 arithmetic (AVX-512 VNNI / BW or AVX2 when
 * the compiler targets them, plain C otherwise) straight into registers, and the recursive PSUM
 * quantization runs on it at once: the [n, M, N] tile tensor never exists, in the forward or in
 * the backward's recomputation.
 *
 * Layout: codes are int16 row-major [rows][n * te], each tile zero-padded to an even depth te; a
 * batch of B independent products (attention's per-head matmuls) stacks B matrices of each operand.
 * They are packed per block of MR rows (activations) / NR columns (weights) into int16 pairs
 * (k even, k odd) held in one int32, [Kp / 2][MR or NR]; a block of MR x NR outputs keeps its
 * running sums in L1 while the kernel walks the n tiles.
 *
 * The dtype-generic functions (forward, backward, correction) are in psum_gemm_body.c, included
 * once per dtype by the Python loader (apsq.kernels.int_gemm). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(APSQ_PORTABLE)
#include <immintrin.h>
#define APSQ_SIMD 1
#define MR 8
#define NR 32
#elif defined(__AVX2__) && !defined(APSQ_PORTABLE)
#include <immintrin.h>
#define APSQ_SIMD 2
#define MR 6
#define NR 16
#else
#define APSQ_SIMD 0
#define MR 4
#define NR 16
#endif
#define MT (MR * NR)

static inline long lmin(long a, long b) { return a < b ? a : b; }
static inline long lmax(long a, long b) { return a > b ? a : b; }

/* Rows of an output block (the backward's chunks are multiples of it). */
int apsq_gemm_mr(void) { return MR; }

/* Which micro-kernel this build uses: 2 = AVX-512 VNNI, 1 = AVX-512 BW, 3 = AVX2, 0 = portable C. */
int apsq_gemm_isa(void) {
#if APSQ_SIMD == 1 && defined(__AVX512VNNI__)
    return 2;
#elif APSQ_SIMD == 1
    return 1;
#elif APSQ_SIMD == 2
    return 3;
#else
    return 0;
#endif
}

static inline int32_t pair16(int16_t lo, int16_t hi) {
    return (int32_t)((uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16));
}

/* Row r of a packed block: the kp2 pairs of the int16 row s into dst [kp2][width] (column r). */
static inline void store_pairs(const int16_t *s, long kp2, int width, int r, int32_t *dst) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (long kk = 0; kk < kp2; kk++) { /* a pair's int32 is its two int16 in memory order (pair16) */
        int32_t v;
        memcpy(&v, s + 2 * kk, sizeof v);
        dst[kk * width + r] = v;
    }
#else
    for (long kk = 0; kk < kp2; kk++) dst[kk * width + r] = pair16(s[2 * kk], s[2 * kk + 1]);
#endif
}

/* Rows [r0, r0 + width) of the int16 [R][Kp] matrix as int32 pairs [Kp / 2][width] (zero past R). */
static void pack_pairs(const int16_t *src, long R, long Kp, long r0, int width, int32_t *dst) {
    long kp2 = Kp / 2;
    for (int r = 0; r < width; r++) {
        long row = r0 + r;
        if (row < R) {
            const int16_t *s = src + row * Kp;
            store_pairs(s, kp2, width, r, dst);
        } else {
            for (long kk = 0; kk < kp2; kk++) dst[kk * width + r] = 0;
        }
    }
}

static void *alloc64(size_t bytes) {
    size_t b = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, b ? b : 64);
}

/* Packs every MR-row block of each of the B matrices in xa ([B][M][Kp]) and every NR-row block of
 * each in wb ([B][N][Kp]); returns 0 when out of memory. */
static int pack_operands(const int16_t *xa, const int16_t *wb, long B, long M, long N, long Kp, int32_t **ap,
                         int32_t **bp, int nthreads) {
    long nrt = (M + MR - 1) / MR, nct = (N + NR - 1) / NR, kp2 = Kp / 2;
    *ap = (int32_t *)alloc64((size_t)B * nrt * kp2 * MR * sizeof(int32_t));
    *bp = (int32_t *)alloc64((size_t)B * nct * kp2 * NR * sizeof(int32_t));
    if (!*ap || !*bp) {
        free(*ap);
        free(*bp);
        return 0;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long j = 0; j < B * nrt; j++)
        pack_pairs(xa + (j / nrt) * M * Kp, M, Kp, (j % nrt) * MR, MR, *ap + j * kp2 * MR);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long j = 0; j < B * nct; j++)
        pack_pairs(wb + (j / nct) * N * Kp, N, Kp, (j % nct) * NR, NR, *bp + j * kp2 * NR);
    return 1;
}

/* c[MR][NR] = the int32 products of a tile: a [kp2][MR] and b [kp2][NR] packed pairs. */
#if APSQ_SIMD == 1
#ifdef __AVX512VNNI__
#define DPW(c, a, b) _mm512_dpwssd_epi32((c), (a), (b))
#else
#define DPW(c, a, b) _mm512_add_epi32((c), _mm512_madd_epi16((a), (b)))
#endif
static inline void tile_product(const int32_t *a, const int32_t *b, long kp2, int32_t *c) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
            c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00,
            c70 = c00, c71 = c00;
    for (long kk = 0; kk < kp2; kk++) {
        const __m512i b0 = _mm512_loadu_si512((const void *)(b + kk * NR));
        const __m512i b1 = _mm512_loadu_si512((const void *)(b + kk * NR + 16));
        const int32_t *ak = a + kk * MR;
        __m512i av;
        av = _mm512_set1_epi32(ak[0]); c00 = DPW(c00, av, b0); c01 = DPW(c01, av, b1);
        av = _mm512_set1_epi32(ak[1]); c10 = DPW(c10, av, b0); c11 = DPW(c11, av, b1);
        av = _mm512_set1_epi32(ak[2]); c20 = DPW(c20, av, b0); c21 = DPW(c21, av, b1);
        av = _mm512_set1_epi32(ak[3]); c30 = DPW(c30, av, b0); c31 = DPW(c31, av, b1);
        av = _mm512_set1_epi32(ak[4]); c40 = DPW(c40, av, b0); c41 = DPW(c41, av, b1);
        av = _mm512_set1_epi32(ak[5]); c50 = DPW(c50, av, b0); c51 = DPW(c51, av, b1);
        av = _mm512_set1_epi32(ak[6]); c60 = DPW(c60, av, b0); c61 = DPW(c61, av, b1);
        av = _mm512_set1_epi32(ak[7]); c70 = DPW(c70, av, b0); c71 = DPW(c71, av, b1);
    }
    _mm512_storeu_si512((void *)(c + 0 * NR), c00); _mm512_storeu_si512((void *)(c + 0 * NR + 16), c01);
    _mm512_storeu_si512((void *)(c + 1 * NR), c10); _mm512_storeu_si512((void *)(c + 1 * NR + 16), c11);
    _mm512_storeu_si512((void *)(c + 2 * NR), c20); _mm512_storeu_si512((void *)(c + 2 * NR + 16), c21);
    _mm512_storeu_si512((void *)(c + 3 * NR), c30); _mm512_storeu_si512((void *)(c + 3 * NR + 16), c31);
    _mm512_storeu_si512((void *)(c + 4 * NR), c40); _mm512_storeu_si512((void *)(c + 4 * NR + 16), c41);
    _mm512_storeu_si512((void *)(c + 5 * NR), c50); _mm512_storeu_si512((void *)(c + 5 * NR + 16), c51);
    _mm512_storeu_si512((void *)(c + 6 * NR), c60); _mm512_storeu_si512((void *)(c + 6 * NR + 16), c61);
    _mm512_storeu_si512((void *)(c + 7 * NR), c70); _mm512_storeu_si512((void *)(c + 7 * NR + 16), c71);
}
#elif APSQ_SIMD == 2
/* AVX2: 6 rows x 16 columns in 12 ymm accumulators; vpmaddwd does two k per lane. */
#define DPW2(c, a, b) _mm256_add_epi32((c), _mm256_madd_epi16((a), (b)))
static inline void tile_product(const int32_t *a, const int32_t *b, long kp2, int32_t *c) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
            c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (long kk = 0; kk < kp2; kk++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(b + kk * NR));
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + kk * NR + 8));
        const int32_t *ak = a + kk * MR;
        __m256i av;
        av = _mm256_set1_epi32(ak[0]); c00 = DPW2(c00, av, b0); c01 = DPW2(c01, av, b1);
        av = _mm256_set1_epi32(ak[1]); c10 = DPW2(c10, av, b0); c11 = DPW2(c11, av, b1);
        av = _mm256_set1_epi32(ak[2]); c20 = DPW2(c20, av, b0); c21 = DPW2(c21, av, b1);
        av = _mm256_set1_epi32(ak[3]); c30 = DPW2(c30, av, b0); c31 = DPW2(c31, av, b1);
        av = _mm256_set1_epi32(ak[4]); c40 = DPW2(c40, av, b0); c41 = DPW2(c41, av, b1);
        av = _mm256_set1_epi32(ak[5]); c50 = DPW2(c50, av, b0); c51 = DPW2(c51, av, b1);
    }
    _mm256_storeu_si256((__m256i *)(c + 0 * NR), c00); _mm256_storeu_si256((__m256i *)(c + 0 * NR + 8), c01);
    _mm256_storeu_si256((__m256i *)(c + 1 * NR), c10); _mm256_storeu_si256((__m256i *)(c + 1 * NR + 8), c11);
    _mm256_storeu_si256((__m256i *)(c + 2 * NR), c20); _mm256_storeu_si256((__m256i *)(c + 2 * NR + 8), c21);
    _mm256_storeu_si256((__m256i *)(c + 3 * NR), c30); _mm256_storeu_si256((__m256i *)(c + 3 * NR + 8), c31);
    _mm256_storeu_si256((__m256i *)(c + 4 * NR), c40); _mm256_storeu_si256((__m256i *)(c + 4 * NR + 8), c41);
    _mm256_storeu_si256((__m256i *)(c + 5 * NR), c50); _mm256_storeu_si256((__m256i *)(c + 5 * NR + 8), c51);
}

/* The float element-wise work on one tile of an MR x NR block (psum_gemm_pass.c, T_F32), in AVX2: the
 * same IEEE operations in the same order as the generic loops there, on 8 outputs at a time (vector v =
 * row * 2 + half, outputs [8v, 8v + 8) of the block); the clamp is max then min (the same value: no NaN
 * reaches it), and a value is in range (m) where the clamp left it unchanged. un, is, s: the unit, inverse step and step of each half's 8 columns. The step-gradient
 * products g * (c - m u) are exact in double and summed per tile into ca[4] (columns [4k, 4k + 4) of
 * the block, rows in order): per column for per-channel steps, all four together per tensor. */
#define NV (MT / 8)
#ifdef __FMA__
#define FMAD(a, b, c) _mm256_fmadd_pd((a), (b), (c)) /* a * b is exact: the same as mul then add */
#else
#define FMAD(a, b, c) _mm256_add_pd(_mm256_mul_pd((a), (b)), (c))
#endif
static inline __m256 v_tile(const int32_t *c, int v, __m256 un) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(c + 8 * v))), un);
}

/* forward, a pending tile (or any psq tile): sum = (keep ? sum + q : q), q = clamp(floor(c un is + 1/2)) s */
static inline void v_fwd_pending(const int32_t *c, const __m256 *un, const __m256 *is, const __m256 *s, float *sum,
                                 int keep, __m256 fqn, __m256 fqp) {
    const __m256 half = _mm256_set1_ps(0.5f);
    for (int v = 0; v < NV; v++) {
        const int h = v & 1;
        __m256 x = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(v_tile(c, v, un[h]), is[h]), half));
        x = _mm256_min_ps(_mm256_max_ps(x, fqn), fqp);
        __m256 q = _mm256_mul_ps(x, s[h]);
        if (keep) q = _mm256_add_ps(_mm256_loadu_ps(sum + 8 * v), q);
        _mm256_storeu_ps(sum + 8 * v, q);
    }
}

/* forward, the closing tile of a group: acc = clamp(floor(((c un + pend) + acc) is + 1/2)) s (pend when hp,
 * acc when ha), bad = hp1 where the requantization saturated */
static inline void v_fwd_closing(const int32_t *c, const __m256 *un, const __m256 *is, const __m256 *s,
                                 const float *pend, float *acc, int32_t *bad, int hp, int ha, int32_t hp1, __m256 fqn,
                                 __m256 fqp) {
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256i hv = _mm256_set1_epi32(hp1);
    for (int v = 0; v < NV; v++) {
        const int h = v & 1;
        __m256 val = v_tile(c, v, un[h]);
        if (hp) val = _mm256_add_ps(val, _mm256_loadu_ps(pend + 8 * v));
        if (ha) val = _mm256_add_ps(val, _mm256_loadu_ps(acc + 8 * v));
        const __m256 x = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(val, is[h]), half));
        const __m256 cc = _mm256_min_ps(_mm256_max_ps(x, fqn), fqp);
        const __m256 out = _mm256_cmp_ps(cc, x, _CMP_NEQ_UQ); /* x < qn or x > qp: the clamp changed it */
        const __m256i b = _mm256_loadu_si256((const __m256i *)(bad + 8 * v));
        _mm256_storeu_si256((__m256i *)(bad + 8 * v), _mm256_blendv_epi8(b, hv, _mm256_castps_si256(out)));
        _mm256_storeu_ps(acc + 8 * v, _mm256_mul_ps(cc, s[h]));
    }
}

/* a[0] += gd * d over the half's columns [8h, 8h + 4), a[1] over [8h + 4, 8h + 8) (v = 2 * row + h) */
static inline void v_grad(const double *gd, int v, __m256 d, __m256d *a0, __m256d *a1) {
    *a0 = FMAD(_mm256_loadu_pd(gd + 8 * v), _mm256_cvtps_pd(_mm256_castps256_ps128(d)), *a0);
    *a1 = FMAD(_mm256_loadu_pd(gd + 8 * v + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1)), *a1);
}

/* backward, a pending tile (or any psq tile) i, the outputs [8v, 8v + 8) of half h: pend (first: starts it),
 * the products g * (c - m u) into a0, a1 (v_grad); returns the lanes whose requantization saturated */
static inline __m256 v_bwd_pending8(const int32_t *c, int v, __m256 un, __m256 is, __m256 s, float *pend, int first,
                                    const double *gd, __m256d *a0, __m256d *a1, __m256 fqn, __m256 fqp) {
    const __m256 u = _mm256_mul_ps(v_tile(c, v, un), is);
    const __m256 x = _mm256_floor_ps(_mm256_add_ps(u, _mm256_set1_ps(0.5f)));
    const __m256 cc = _mm256_min_ps(_mm256_max_ps(x, fqn), fqp);
    const __m256 nm = _mm256_cmp_ps(cc, x, _CMP_NEQ_UQ); /* not m: x < qn or x > qp */
    v_grad(gd, v, _mm256_sub_ps(cc, _mm256_andnot_ps(nm, u)), a0, a1); /* c - m u */
    __m256 q = _mm256_mul_ps(cc, s);
    if (!first) q = _mm256_add_ps(_mm256_loadu_ps(pend + 8 * v), q);
    _mm256_storeu_ps(pend + 8 * v, q);
    return nm;
}

/* backward, a pending tile (or any psq tile) i: pend (first: starts it), bit i % 64 of zw where the tile's
 * requantization saturated, ca = the products g * (c - m u) (gd: g reaching the tile, double), summed per
 * column quarter of the block in four register accumulators (rows in order) */
static inline void v_bwd_pending(const int32_t *c, const __m256 *un, const __m256 *is, const __m256 *s, float *pend,
                                 int first, const double *gd, uint64_t *zw, long i, __m256d *ca, __m256 fqn,
                                 __m256 fqp) {
    const __m256 half = _mm256_set1_ps(0.5f);
    const uint64_t bit = (uint64_t)1 << (i % 64);
    __m256 sat = _mm256_setzero_ps();
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    for (int v = 0; v < NV; v += 2) {
        sat = _mm256_or_ps(sat, v_bwd_pending8(c, v, un[0], is[0], s[0], pend, first, gd, &a0, &a1, fqn, fqp));
        sat = _mm256_or_ps(sat, v_bwd_pending8(c, v + 1, un[1], is[1], s[1], pend, first, gd, &a2, &a3, fqn, fqp));
    }
    ca[0] = a0;
    ca[1] = a1;
    ca[2] = a2;
    ca[3] = a3;
    if (_mm256_movemask_ps(sat)) /* some output's tile saturated (rare unless the steps are too small): its bits */
        for (int v = 0; v < NV; v++) {
            const int h = v & 1;
            const __m256 x = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(v_tile(c, v, un[h]), is[h]), half));
            const __m256 nm = _mm256_cmp_ps(_mm256_min_ps(_mm256_max_ps(x, fqn), fqp), x, _CMP_NEQ_UQ);
            for (int b = _mm256_movemask_ps(nm); b; b &= b - 1) zw[8 * v + __builtin_ctz(b)] |= bit;
        }
}

/* backward, the closing tile of a group, outputs [8v, 8v + 8) of half h: u = ((c un + pend) + acc) is (as
 * v_fwd_closing), acc = c s, the products into a0, a1 (gd: g reaching A_h) */
static inline void v_bwd_closing8(const int32_t *c, int v, __m256 un, __m256 is, __m256 s, const float *pend,
                                  float *acc, int hp, int ha, const double *gd, __m256d *a0, __m256d *a1, __m256 fqn,
                                  __m256 fqp) {
    __m256 val = v_tile(c, v, un);
    if (hp) val = _mm256_add_ps(val, _mm256_loadu_ps(pend + 8 * v));
    if (ha) val = _mm256_add_ps(val, _mm256_loadu_ps(acc + 8 * v));
    const __m256 u = _mm256_mul_ps(val, is);
    const __m256 x = _mm256_floor_ps(_mm256_add_ps(u, _mm256_set1_ps(0.5f)));
    const __m256 cc = _mm256_min_ps(_mm256_max_ps(x, fqn), fqp);
    const __m256 nm = _mm256_cmp_ps(cc, x, _CMP_NEQ_UQ);
    v_grad(gd, v, _mm256_sub_ps(cc, _mm256_andnot_ps(nm, u)), a0, a1);
    _mm256_storeu_ps(acc + 8 * v, _mm256_mul_ps(cc, s));
}

/* backward, the closing tile of a group: every output of the block (v_bwd_closing8), ca as v_bwd_pending */
static inline void v_bwd_closing(const int32_t *c, const __m256 *un, const __m256 *is, const __m256 *s,
                                 const float *pend, float *acc, int hp, int ha, const double *gd, __m256d *ca,
                                 __m256 fqn, __m256 fqp) {
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    for (int v = 0; v < NV; v += 2) {
        v_bwd_closing8(c, v, un[0], is[0], s[0], pend, acc, hp, ha, gd, &a0, &a1, fqn, fqp);
        v_bwd_closing8(c, v + 1, un[1], is[1], s[1], pend, acc, hp, ha, gd, &a2, &a3, fqn, fqp);
    }
    ca[0] = a0;
    ca[1] = a1;
    ca[2] = a2;
    ca[3] = a3;
}

/* the tile's step-gradient sums: per tensor *slot += all of ca; per channel col[j] += column j's */
static inline double v_sum4(const __m256d *ca) {
    const __m256d t = _mm256_add_pd(_mm256_add_pd(ca[0], ca[1]), _mm256_add_pd(ca[2], ca[3]));
    const __m128d p = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    return _mm_cvtsd_f64(_mm_add_sd(p, _mm_unpackhi_pd(p, p)));
}
static inline void v_cols(const __m256d *ca, double *col) {
    for (int k = 0; k < 4; k++) _mm256_storeu_pd(col + 4 * k, _mm256_add_pd(_mm256_loadu_pd(col + 4 * k), ca[k]));
}
#else
static inline void tile_product(const int32_t *a, const int32_t *b, long kp2, int32_t *c) {
    int32_t acc[MT];
    memset(acc, 0, sizeof(acc));
    for (long kk = 0; kk < kp2; kk++) {
        const int32_t *ak = a + kk * MR, *bk = b + kk * NR;
        for (int r = 0; r < MR; r++) {
            const int32_t a0 = (int16_t)(ak[r] & 0xffff), a1 = (int16_t)((uint32_t)ak[r] >> 16);
            for (int j = 0; j < NR; j++) {
                const int32_t b0 = (int16_t)(bk[j] & 0xffff), b1 = (int16_t)((uint32_t)bk[j] >> 16);
                acc[r * NR + j] += a0 * b0 + a1 * b1;
            }
        }
    }
    memcpy(c, acc, sizeof(acc));
}
#endif

/* Sum of t[0..MT) with 16 independent double accumulators (vectorisable; MT is a multiple of 16). */
static inline double block_sum(const double *t) {
    double part[16] = {0};
    for (long k = 0; k < MT; k += 16)
        for (int q = 0; q < 16; q++) part[q] += t[k + q];
    double s = 0.0;
    for (int q = 0; q < 16; q++) s += part[q];
    return s;
}

/* col[j] += sum over rows r (ascending) of t[r][j], j < NR: one job's per-column step gradients. */
static inline void col_sums(const double *t, double *col) {
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) col[j] += t[r * NR + j];
}

/* Row blocks per job in the per-channel step-gradient pass (fixed: the sums' order must not depend
 * on the thread count). */
#define RB_CH 16

static inline int bad_at(const void *lb, int lb8, long e) {
    return lb8 ? ((const uint8_t *)lb)[e] : ((const int16_t *)lb)[e];
}

/* Word w of the zero-gradient tile bits of an MR x NR output block (rows x cols in range), for zb[e][w],
 * e = e0 + r * N + j: the pending tiles that saturated (zw, one bit per tile of the word) and, for apsq,
 * every tile of the groups before last_bad (bad[e]: tiles below min(bad * gs, n)). The words are stored
 * only from the block's first nonzero word on (*written set then, the words before it stored as zeros):
 * a block whose bits are all zero writes nothing (the caller flags the blocks with *written). badany: some
 * bad[e] is nonzero. Returns the OR of the block's words w. */
static inline uint64_t store_zero_bits(uint64_t *zb, const uint64_t *zw, const int16_t *bad, int badany, long w,
                                       long Wz, long n, int gs, long e0, long N, int rows, int cols, int *written) {
    const long lo = w * 64;
    uint64_t any = 0, word[MT];
    if (!*written && !badany) { /* the common case: no tile saturated, nothing to store */
        for (int e = 0; e < MT; e++) any |= zw[e];
        if (!any) return 0;
    }
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            const int e = r * NR + j;
            const long nb = lmin((long)bad[e] * gs, n);
            uint64_t bits = zw[e];
            if (nb >= lo + 64) bits = ~(uint64_t)0;
            else if (nb > lo) bits |= ((uint64_t)1 << (nb - lo)) - 1;
            word[e] = bits;
            any |= bits;
        }
    if (!*written) {
        if (!any) return 0;
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++)
                for (long w0 = 0; w0 < w; w0++) zb[(e0 + r * N + j) * Wz + w0] = 0;
        *written = 1;
    }
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) zb[(e0 + r * N + j) * Wz + w] = word[r * NR + j];
    return any;
}
