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

/* Backward (psum_gemm_pass.c): step gradients gsc [n] (cs = 0) or [n][N] (cs = 1) and, in place, the
 * correction of the operand gradients gx [B*M][n*t], gw [B*N][n*t] (computed as g @ W, g^T @ x; either
 * may be NULL) at the outputs with a zero-gradient tile. xf [B*M][n*t], wf [B*N][n*t]: the float
 * operands, zero-padded per tile to t, with their inverse steps ix [1] and iw [B*N] (iw_rows) or [1]; the
 * kernel packs its codes from them. zb: scratch for the zero-gradient tile bits of zrows rows,
 * [zrows][N][(n + 63) / 64] (zrows a multiple of MR, apsq_gemm_mr, or >= M). Returns the number of
 * outputs with a zero-gradient tile, -1 when out of memory, -2 when an operand is not a code. */
long SUF(apsq_gemm_bwd)(const T *xf, const T *wf, const double *ix, const double *iw, int iw_rows, long B, long M,
                        long N, long n, long te, const T *unit, const double *sd, const double *si, long cs, int apsq,
                        int gs, int qn, int qp, const T *g, const void *lb, int lb8, double *gsc, uint64_t *zb,
                        long zrows, long t, T *gx, T *gw, int nthreads) {
    return (cs ? SUF(gemm_bwd_lanes) : SUF(gemm_bwd_tensor))(xf, wf, ix, iw, iw_rows, B, M, N, n, te, unit, sd, si,
                                                             apsq, gs, qn, qp, g, lb, lb8, gsc, zb, zrows, t, gx, gw,
                                                             nthreads);
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
        int rmx = 0, rbad = 0;
        memset(d, 0, Kp * sizeof(int16_t));
        for (long i = 0; i < n; i++) {
            const long k0 = i * tile, kn = lmin(tile, K - k0);
            for (long k = 0; k < kn; k++) { /* no loop-carried state but reductions: vectorised */
                const T v = s[k0 + k] * inv, a = v < 0 ? -v : v;
                const int ok = FLOOR(v) == v && a <= lim;
                const int code = (int)(ok ? v : (T)0), mag = code < 0 ? -code : code;
                rbad |= !ok;
                rmx = mag > rmx ? mag : rmx;
                d[i * te + k] = (int16_t)code;
            }
        }
        bad |= rbad;
        if (rmx > mx) mx = rmx;
    }
    return bad ? -1 : mx;
}
