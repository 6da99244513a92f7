/* dtype-generic part of psum_gemm.c: included once per T (float, double) with
 * T, FLOOR (floorf / floor) and SUF(name) (name_f32 / name_f64) defined.
 *
 * Per element the operations, their order and precision are those of csrc/psum_chunk_body.c (and so of
 * the reference loop): x * (1/s) for x / s (exact for the power-of-two steps the caller admits),
 * floor(u + 1/2), clamp, the pending sum ((P_0 + P_1) + ...), v = (Tp_l + pending) + A_{h-1}.
 * Arguments shared by the three functions:
 *   xa [B][M][n*te], wb [B][N][n*te]  int16 operand codes, tile i = columns [i*te, (i+1)*te);
 *                               output (b, m, o) = sum over k of xa[b][m][k] wb[b][o][k], stored at
 *                               e = (b * M + m) * N + o in out, last_bad, g and zb
 *   unit [N]                    value of one code product for output column o (sx * sw[o]), every batch
 *   sd, si [n][cs ? N : 1]      steps s_i (s_{i,o} per output column when cs = 1, per-channel
 *                               PSUM steps; cs = 0: one per tile step) and their reciprocals
 *   apsq, gs, qn, qp            mode (0 = psq), group size, code range
 *   lb, lb8                     last_bad [M][N] (uint8 when lb8, else int16): 1 + last group whose
 *                               closing requantization saturated, 0 if none */


/* Forward: out [M][N] and, for apsq, last_bad; cs = 1 for per-channel steps sd, si [n][N]. Returns 0 when
 * out of memory. */
int SUF(apsq_gemm_fwd)(const int16_t *xa, const int16_t *wb, long B, long M, long N, long n, long te, const T *unit,
                       const double *sd, const double *si, long cs, int apsq, int gs, int qn, int qp, T *out, void *lb,
                       int lb8, int nthreads) {
    return (cs ? SUF(gemm_fwd_lanes) : SUF(gemm_fwd_tensor))(xa, wb, B, M, N, n, te, unit, sd, si, apsq, gs, qn, qp,
                                                             out, lb, lb8, nthreads);
}

/* Backward, first pass (psum_gemm_pass.c): step gradients gsc [n] (cs = 0) or [n][N] (cs = 1) and the
 * zero-gradient tiles of every output (nonzero: the output needs a correction), zb [B][M][N][(n + 63) / 64] (bit i % 64 of
 * word i / 64: tile i; store_zero_bits). */
int SUF(apsq_gemm_bwd)(const int16_t *xa, const int16_t *wb, long B, long M, long N, long n, long te, const T *unit,
                       const double *sd, const double *si, long cs, int apsq, int gs, int qn, int qp, const T *g,
                       const void *lb, int lb8, double *gsc, uint64_t *zb, int nthreads) {
    return (cs ? SUF(gemm_bwd_lanes) : SUF(gemm_bwd_tensor))(xa, wb, B, M, N, n, te, unit, sd, si, apsq, gs, qn, qp,
                                                             g, lb, lb8, gsc, zb, nthreads);
}

/* Backward, second pass: the operand gradients were computed as g @ W and g^T @ x, as if every tile
 * received g. For each flagged output e = idx[f] (row-major m * N + o, ascending) this subtracts
 * g[e] * W[o, tile i] from gx[m, tile i] and g[e] * x[m, tile i] from gw[o, tile i] for every tile i
 * whose gradient is 0 instead: the bits zb [B*M*N][(n + 63) / 64] the first pass wrote (psq, tile i
 * saturated; apsq, tile i lies in a group before last_bad[e], or is a pending tile that saturated).
 * xf [M][n*t], wf [N][n*t] are the float operands and gx, gw the gradients (same layout; either may be
 * NULL). Rows of gx are updated by one thread each, in f order; rows of gw likewise, in f order within
 * a column: the result does not depend on the thread count. Returns 0 when out of memory. */
int SUF(apsq_gemm_correct)(long B, long M, long N, long n, long t, const T *g, const uint64_t *zb,
                           const int64_t *idx, long F, const T *xf, const T *wf, T *gx, T *gw, int nthreads) {
    const long Kt = n * t, W = (n + 63) / 64;
    long *colptr = (long *)calloc(B * N + 1, sizeof(long));
    long *perm = (long *)malloc((size_t)(F ? F : 1) * sizeof(long));
    if (!colptr || !perm) {
        free(colptr);
        free(perm);
        return 0;
    }
    if (gx) {
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16)
        for (long m = 0; m < B * M; m++) {
            const long f1 = lower_bound(idx, F, (int64_t)(m + 1) * N);
            for (long f = lower_bound(idx, F, (int64_t)m * N); f < f1; f++) {
                const long o = (idx[f] / (M * N)) * N + idx[f] % N;
                const T ge = g[idx[f]];
                const uint64_t *bits = zb + idx[f] * W;
                for (long i = 0; i < n; i++) {
                    if (!((bits[i / 64] >> (i % 64)) & 1)) continue;
                    T *dst = gx + m * Kt + i * t;
                    const T *src = wf + o * Kt + i * t;
                    for (long k = 0; k < t; k++) dst[k] = dst[k] - ge * src[k];
                }
            }
        }
    }
    if (gw) {
        for (long f = 0; f < F; f++) colptr[(idx[f] / (M * N)) * N + idx[f] % N + 1]++;
        for (long o = 0; o < B * N; o++) colptr[o + 1] += colptr[o];
        {
            long *fill = (long *)malloc((size_t)(B * N) * sizeof(long));
            if (!fill) {
                free(colptr);
                free(perm);
                return 0;
            }
            memcpy(fill, colptr, (size_t)(B * N) * sizeof(long));
            for (long f = 0; f < F; f++) perm[fill[(idx[f] / (M * N)) * N + idx[f] % N]++] = f; /* stable */
            free(fill);
        }
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16)
        for (long o = 0; o < B * N; o++) {
            for (long q = colptr[o]; q < colptr[o + 1]; q++) {
                const long f = perm[q], m = idx[f] / N;
                const T ge = g[idx[f]];
                const uint64_t *bits = zb + idx[f] * W;
                for (long i = 0; i < n; i++) {
                    if (!((bits[i / 64] >> (i % 64)) & 1)) continue;
                    T *dst = gw + o * Kt + i * t;
                    const T *src = xf + m * Kt + i * t;
                    for (long k = 0; k < t; k++) dst[k] = dst[k] - ge * src[k];
                }
            }
        }
    }
    free(colptr);
    free(perm);
    return 1;
}

/* Operand codes: dst [R][n*te] int16 = src [R][K] * inv_step (inv_step[r] when per_row, else
 * inv_step[0]), tile i at [i*te, i*te + tile), zero elsewhere. Returns the largest |code|, or -1 when
 * some src * inv_step is not an integer in [-32767, 32767] (NaN and Inf included). The steps are
 * powers of two, so src * inv_step is exactly src / step (the caller checks the reciprocals). */
long SUF(apsq_codes16)(const T *src, long R, long K, long tile, long te, const double *inv_step, int per_row,
                       int16_t *dst, int nthreads) {
    const long n = (K + tile - 1) / tile, Kp = n * te;
    long mx = 0;
    int bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(max : mx) reduction(| : bad)
    for (long r = 0; r < R; r++) {
        const T inv = (T)inv_step[per_row ? r : 0], lim = (T)32767;
        const T *s = src + r * K;
        int16_t *d = dst + r * Kp;
        T rmx = 0;
        int rbad = 0;
        memset(d, 0, Kp * sizeof(int16_t));
        for (long i = 0; i < n; i++) {
            const long k0 = i * tile, kn = lmin(tile, K - k0);
            for (long k = 0; k < kn; k++) {
                const T v = s[k0 + k] * inv;
                const T a = v < 0 ? -v : v;
                rbad |= !(FLOOR(v) == v && a <= lim);
                rmx = a > rmx ? a : rmx;
                d[i * te + k] = (int16_t)(rbad ? 0 : v);
            }
        }
        bad |= rbad;
        if ((long)rmx > mx) mx = (long)rmx;
    }
    return bad ? -1 : mx;
}
