/* The forward and the step-gradient pass of psum_gemm_body.c, as a template: included once per dtype
 * (T, FLOOR, SUF as there) and per step layout, with CS = 0 (one PSUM step per tile step, a broadcast
 * scalar: the per-tensor code as it was) or CS = 1 (per-channel steps sd, si [n][N], one per tile step
 * and output column), and PASS(name) naming the instance (name_tensor_f32, name_lanes_f64, ...). The
 * Python loader (apsq.kernels.int_gemm.source) writes the instances; the entry points in
 * psum_gemm_body.c call the one for their cs. Arguments as in psum_gemm_body.c. */
#if !CS
/* Per-channel steps sd, si [n][N] (double) as T, converted once per call into *sdt, *sit (malloc'd; the
 * caller frees them); 0 when out of memory. */
static int SUF(steps_t)(const double *sd, const double *si, long count, T **sdt, T **sit) {
    *sdt = (T *)malloc((size_t)(count > 0 ? count : 1) * sizeof(T));
    *sit = (T *)malloc((size_t)(count > 0 ? count : 1) * sizeof(T));
    if (!*sdt || !*sit) {
        free(*sdt);
        free(*sit);
        return 0;
    }
    for (long e = 0; e < count; e++) {
        (*sdt)[e] = (T)sd[e];
        (*sit)[e] = (T)si[e];
    }
    return 1;
}

/* Per-channel steps of tile i for the NR output columns [o0, o0 + NR) (columns past N get 1), from the
 * converted sdt, sit [n][N] (steps_t). */
static inline void SUF(tile_steps)(const T *sdt, const T *sit, long i, long o0, long N, T *sv, T *isv) {
    const T *ps = sdt + i * N + o0, *pi = sit + i * N + o0;
    if (o0 + NR <= N) {
        memcpy(sv, ps, NR * sizeof(T));
        memcpy(isv, pi, NR * sizeof(T));
        return;
    }
    for (int j = 0; j < NR; j++) {
        sv[j] = o0 + j < N ? ps[j] : (T)1;
        isv[j] = o0 + j < N ? pi[j] : (T)1;
    }
}

/* v_h = (Tp_l + pending) + A_{h-1}: the value the closing step of a group quantizes (reference order);
 * Tp_l = c * unit is exact. */
static inline T SUF(closing_value)(int32_t c, T unit, T pend, T acc, int hp, int ha) {
    T v = (T)c * unit;
    if (hp) v = v + pend;
    if (ha) v = v + acc;
    return v;
}

/* Rows [r0, r0 + width) of the float operand src [R][n*t] times its inverse step (inv[row] when per_row,
 * else inv[0]) as int16 code pairs [Kp / 2][width] in the layout of the codes (tile i at [i*te, i*te + t),
 * zero-padded to the even te; zero past R): the backward packs the operands it already holds instead
 * of a copy of their codes. Returns 1 when some value is not an integer in [-32767, 32767], 2 when out of
 * memory. */
static int SUF(pack_pairs_f)(const T *src, long R, long n, long t, long te, const double *inv, int per_row, long r0,
                             int width, int32_t *dst) {
    const long kp2 = n * te / 2;
    const T lim = (T)32767;
    int bad = 0;
    int16_t *codes = (int16_t *)malloc((size_t)(n * te > 0 ? n * te : 1) * sizeof(int16_t)); /* one row's */
    if (!codes) return 2;
    for (int r = 0; r < width; r++) {
        const long row = r0 + r;
        if (row >= R) {
            for (long kk = 0; kk < kp2; kk++) dst[kk * width + r] = 0;
            continue;
        }
        const T *s = src + row * n * t;
        const T iv = (T)inv[per_row ? row : 0];
        for (long i = 0; i < n; i++) { /* the row's codes (a loop the compiler vectorises), then its pairs */
            int16_t *d = codes + i * te;
            const T *si_ = s + i * t;
            for (long k = 0; k < t; k++) {
                const T v = si_[k] * iv, a = v < 0 ? -v : v;
                const int ok = FLOOR(v) == v && a <= lim;
                bad |= !ok;
                d[k] = (int16_t)(ok ? v : (T)0);
            }
            for (long k = t; k < te; k++) d[k] = 0;
        }
        store_pairs(codes, kp2, width, r, dst);
    }
    free(codes);
    return bad;
}

/* pack_operands from the float operands xf [B][M][n*t], wf [B][N][n*t] (steps: ix[0]; iw[row of wf] when
 * iw_rows, else iw[0]). Returns 1, 0 when out of memory, -1 when some value is not an int16 code. */
static int SUF(pack_operands_f)(const T *xf, const T *wf, long B, long M, long N, long n, long t, long te,
                                const double *ix, const double *iw, int iw_rows, int32_t **ap, int32_t **bp,
                                int nthreads) {
    const long nrt = (M + MR - 1) / MR, nct = (N + NR - 1) / NR, kp2 = n * te / 2;
    int bad = 0; /* bit 0: some value is not a code; bit 1: out of memory */
    *ap = (int32_t *)alloc64((size_t)B * nrt * kp2 * MR * sizeof(int32_t));
    *bp = (int32_t *)alloc64((size_t)B * nct * kp2 * NR * sizeof(int32_t));
    if (!*ap || !*bp) {
        free(*ap);
        free(*bp);
        return 0;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(| : bad)
    for (long j = 0; j < B * nrt; j++)
        bad |= SUF(pack_pairs_f)(xf + (j / nrt) * M * n * t, M, n, t, te, ix, 0, (j % nrt) * MR, MR,
                                 *ap + j * kp2 * MR);
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(| : bad)
    for (long j = 0; j < B * nct; j++)
        bad |= SUF(pack_pairs_f)(wf + (j / nct) * N * n * t, N, n, t, te, iw_rows ? iw + (j / nct) * N : iw, iw_rows,
                                 (j % nct) * NR, NR, *bp + j * kp2 * NR);
    if (bad) {
        free(*ap);
        free(*bp);
        return bad & 2 ? 0 : -1;
    }
    return 1;
}

/* The correction of one chunk of the backward (gemm_bwd): rows [m_lo, m_hi) of product bi, their
 * zero-gradient tile bits in zb [m_hi - m_lo][N][Wz] (bit i % 64 of word i / 64: tile i), valid only in the
 * output blocks flagged in zf [row block of the chunk][nct] (MR rows x NR columns; the kernel skips writing
 * the others). For each output (m, o) with a bit set and each such tile i this subtracts g[m, o] * W[o, tile i]
 * from gx[m, tile i] and g[m, o] * x[m, tile i] from gw[o, tile i]. xf [B*M][n*t], wf [B*N][n*t] are the float
 * operands and gx, gw the gradients (same layout; either may be NULL). Rows of gx are updated by one thread
 * each, in o order; rows of gw by one thread each (a column block per job), in m order (chunks in m order
 * too): the result does not depend on the thread count or the chunk size. Returns the number of outputs
 * with a bit set. */
static long SUF(correct_rows)(long bi, long M, long N, long n, long t, long m_lo, long m_hi, const T *g,
                              const uint64_t *zb, const uint8_t *zf, const T *xf, const T *wf, T *gx, T *gw,
                              int nthreads) {
    const long Kt = n * t, W = (n + 63) / 64, e_lo = (bi * M + m_lo) * N, nct = (N + NR - 1) / NR;
    long flagged = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : flagged)
    for (long m = m_lo; m < m_hi; m++) {
        const uint64_t *zr = zb + (m - m_lo) * N * W;
        const uint8_t *fr = zf + (m - m_lo) / MR * nct;
        for (long ct = 0; ct < nct; ct++) {
            if (!fr[ct]) continue;
            for (long o = ct * NR; o < lmin(N, (ct + 1) * NR); o++) {
                uint64_t any = 0;
                for (long w = 0; w < W; w++) any |= zr[o * W + w];
                if (!any) continue;
                flagged++;
                if (!gx) continue;
                const T ge = g[e_lo + (m - m_lo) * N + o];
                const uint64_t *bits = zr + o * W;
                for (long i = 0; i < n; i++) {
                    if (!((bits[i / 64] >> (i % 64)) & 1)) continue;
                    T *dst = gx + (bi * M + m) * Kt + i * t;
                    const T *src = wf + (bi * N + o) * Kt + i * t;
                    for (long k = 0; k < t; k++) dst[k] = dst[k] - ge * src[k];
                }
            }
        }
    }
    if (gw && flagged) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (long ct = 0; ct < nct; ct++) {
            for (long m = m_lo; m < m_hi; m++) {
                if (!zf[(m - m_lo) / MR * nct + ct]) continue;
                for (long o = ct * NR; o < lmin(N, (ct + 1) * NR); o++) {
                    const uint64_t *bits = zb + ((m - m_lo) * N + o) * W;
                    uint64_t any = 0;
                    for (long w = 0; w < W; w++) any |= bits[w];
                    if (!any) continue;
                    const T ge = g[e_lo + (m - m_lo) * N + o];
                    for (long i = 0; i < n; i++) {
                        if (!((bits[i / 64] >> (i % 64)) & 1)) continue;
                        T *dst = gw + (bi * N + o) * Kt + i * t;
                        const T *src = xf + (bi * M + m) * Kt + i * t;
                        for (long k = 0; k < t; k++) dst[k] = dst[k] - ge * src[k];
                    }
                }
            }
        }
    }
    return flagged;
}

#endif

/* Forward: out [M][N] and, for apsq, last_bad. Returns 0 when out of memory. */
static int PASS(gemm_fwd)(const int16_t *xa, const int16_t *wb, long B, long M, long N, long n, long te, const T *unit,
                       const double *sd, const double *si, int apsq, int gs, int qn, int qp, T *out, void *lb,
                       int lb8, int nthreads) {
    const long Kp = n * te, kp2 = Kp / 2, tp2 = te / 2;
    const long nrt = (M + MR - 1) / MR, nct = (N + NR - 1) / NR;
    int32_t *ap, *bp;
    T *sdt = NULL, *sit = NULL; /* per-channel steps as T */
    if (CS && !SUF(steps_t)(sd, si, n * N, &sdt, &sit)) return 0;
    if (!pack_operands(xa, wb, B, M, N, Kp, &ap, &bp, nthreads)) {
        free(sdt);
        free(sit);
        return 0;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long job = 0; job < B * nrt * nct; job++) {
        const long bi = job / (nrt * nct), ct = job % (nrt * nct) / nrt, rt = job % nrt;
        const long m0 = rt * MR, o0 = ct * NR, base = bi * M * N;
        const int32_t *a = ap + (bi * nrt + rt) * kp2 * MR, *b = bp + (bi * nct + ct) * kp2 * NR;
        int32_t c[MT] __attribute__((aligned(64)));
        T acc[MT], pend[MT], un[NR], sv[NR], isv[NR];
        int32_t bad[MT]; /* int32: selects as wide as the float masks vectorise on every ISA */
        const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5;
        for (int j = 0; j < NR; j++) un[j] = o0 + j < N ? unit[o0 + j] : (T)0;
#if APSQ_SIMD == 2 && T_F32
        const __m256 vun[2] = {_mm256_loadu_ps(un), _mm256_loadu_ps(un + 8)};
        const __m256 vqn = _mm256_set1_ps(fqn), vqp = _mm256_set1_ps(fqp);
#endif
        memset(bad, 0, sizeof(bad));
        memset(acc, 0, sizeof(acc)); /* read (not used) by the first tile's select */
        memset(pend, 0, sizeof(pend));
        long g0 = 0, h = 0;
        for (long i = 0; i < n; i++) {
            tile_product(a + i * tp2 * MR, b + i * tp2 * NR, tp2, c);
            const T s = (T)sd[CS ? 0 : i], is = (T)si[CS ? 0 : i]; /* per tensor */
            if (CS) SUF(tile_steps)(sdt, sit, i, o0, N, sv, isv);
            /* psq quantizes every tile on its own into one sum; apsq a group's pending tiles */
            const long l = apsq ? lmin(g0 + gs, n) - 1 : n;
#if APSQ_SIMD == 2 && T_F32
            __m256 vis[2], vs[2];
            for (int hh = 0; hh < 2; hh++) {
                vis[hh] = CS ? _mm256_loadu_ps(isv + 8 * hh) : _mm256_set1_ps(is);
                vs[hh] = CS ? _mm256_loadu_ps(sv + 8 * hh) : _mm256_set1_ps(s);
            }
            if (i < l) {
                v_fwd_pending(c, vun, vis, vs, apsq ? pend : acc, i != g0, vqn, vqp);
                continue;
            }
            v_fwd_closing(c, vun, vis, vs, pend, acc, bad, l > g0, h > 0, (int32_t)(h + 1), vqn, vqp);
            g0 = l + 1;
            h++;
            continue;
#endif
            if (i < l) {
                T *restrict sum = apsq ? pend : acc;
                const T keep = i == g0 ? (T)0 : (T)1; /* the first tile of a sum starts it */
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < NR; j++) {
                        const int e = r * NR + j;
                        T x = FLOOR(((T)c[e] * un[j]) * (CS ? isv[j] : is) + half);
                        x = x < fqn ? fqn : (x > fqp ? fqp : x);
                        const T q = x * (CS ? sv[j] : s);
                        sum[e] = keep != (T)0 ? sum[e] + q : q;
                    }
                continue;
            }
            const int hp = l > g0, ha = h > 0; /* the closing tile of group h */
            const int32_t hp1 = (int32_t)(h + 1);
            for (int r = 0; r < MR; r++)
                for (int j = 0; j < NR; j++) {
                    const int e = r * NR + j;
                    const T v = SUF(closing_value)(c[e], un[j], pend[e], acc[e], hp, ha);
                    T x = FLOOR(v * (CS ? isv[j] : is) + half);
                    bad[e] = x < fqn || x > fqp ? hp1 : bad[e];
                    x = x < fqn ? fqn : (x > fqp ? fqp : x);
                    acc[e] = x * (CS ? sv[j] : s);
                }
            g0 = l + 1;
            h++;
        }
        const int rows = (int)lmin(MR, M - m0), cols = (int)lmin(NR, N - o0);
        for (int r = 0; r < rows; r++) {
            memcpy(out + base + (m0 + r) * N + o0, acc + r * NR, cols * sizeof(T));
            if (!apsq) continue;
            for (int j = 0; j < cols; j++) {
                const long e = base + (m0 + r) * N + o0 + j;
                if (lb8) ((uint8_t *)lb)[e] = (uint8_t)bad[r * NR + j];
                else ((int16_t *)lb)[e] = (int16_t)bad[r * NR + j];
            }
        }
    }
    free(ap);
    free(bp);
    free(sdt);
    free(sit);
    return 1;
}

/* Backward: the LSQ step-size gradients gsc [n][CS ? N : 1] (double) for the output gradient g [M][N]
 * and, in place, the correction of the operand gradients gx / gw (computed by the caller as g @ W and
 * g^T @ x, as if every tile received g): the terms of each output's zero-gradient tiles (a pending
 * tile or a later closing step saturated) are removed (correct_rows). With u = v/s,
 * r = floor(u + 1/2), m = (qn <= r <= qp), c = clamp(r): dL/ds_i = sum g_i * (c - m * u) over every
 * element (per tensor) or over the elements of column o (dL/ds_{i,o}, per channel), g_i the gradient
 * reaching step i's quantizer.
 * Each product's rows are walked in chunks of zrows rows (a multiple of MR, or all M): the chunk's
 * zero-gradient tiles are written as bits into the caller's scratch zb [zrows][N][Wz] and the chunk's
 * rows are corrected at once, so the bits of all outputs never exist together. Each job (a block of
 * NR columns and RB_CH row blocks of one product) sums its rows in order into its own slot of step
 * gradients, whatever chunk the rows fall in, and the slots are added in job order: the result does
 * not depend on the thread count or the chunk size. The operands are packed from the float xf, wf
 * (pack_operands_f). Returns the number of outputs with a zero-gradient tile, -1 when out of memory,
 * -2 when an operand is not an int16 code times its step. */
static long PASS(gemm_bwd)(const T *xf, const T *wf, const double *ix, const double *iw, int iw_rows, long B, long M,
                       long N, long n, long te, const T *unit, const double *sd, const double *si, int apsq, int gs,
                       int qn, int qp, const T *g, const void *lb, int lb8, double *gsc, uint64_t *zb, long zrows,
                       long t, T *gx, T *gw, int nthreads) {
    const long Kp = n * te, kp2 = Kp / 2, tp2 = te / 2, Wz = (n + 63) / 64;
    const long nrt = (M + MR - 1) / MR, nct = (N + NR - 1) / NR;
    const long nrc = (nrt + RB_CH - 1) / RB_CH, njobs = B * nrc * nct, sw = CS ? NR : 1;
    const long crows = zrows >= M ? M : zrows / MR * MR; /* rows per chunk */
    const long cbt = (crows + MR - 1) / MR;            /* row blocks per chunk */
    int32_t *ap, *bp;
    long flagged = 0;
    /* [njobs][n][CS ? NR : 1]: each job's step-gradient sums (per channel, per column) */
    double *part = (double *)calloc((size_t)njobs * n * sw, sizeof(double));
    /* [cbt][nct]: the chunk's blocks whose zero-gradient bits were written (store_zero_bits) */
    uint8_t *zf = (uint8_t *)malloc((size_t)cbt * nct);
    T *sdt = NULL, *sit = NULL; /* per-channel steps as T */
    if (!part || !zf || (CS && !SUF(steps_t)(sd, si, n * N, &sdt, &sit))) {
        free(part);
        free(zf);
        return -1;
    }
    const int packed = SUF(pack_operands_f)(xf, wf, B, M, N, n, t, te, ix, iw, iw_rows, &ap, &bp, nthreads);
    if (packed != 1) {
        free(part);
        free(zf);
        free(sdt);
        free(sit);
        return packed ? -2 : -1;
    }
    memset(gsc, 0, n * (CS ? N : 1) * sizeof(double));
    for (long bi = 0; bi < B; bi++)
      for (long rt0 = 0; rt0 < nrt; rt0 += cbt) {
        const long rt1 = lmin(nrt, rt0 + cbt), m_lo = rt0 * MR, m_hi = lmin(M, rt1 * MR);
        /* the chunk's jobs: (column block, row-chunk job rc) pairs with rows in [rt0, rt1) */
        const long rc0 = rt0 / RB_CH, nrcc = (rt1 - 1) / RB_CH - rc0 + 1;
        uint64_t zany = 0; /* some output of the chunk has a zero-gradient tile */
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(| : zany)
        for (long cj = 0; cj < nct * nrcc; cj++) {
          const long ct = cj / nrcc, rc = rc0 + cj % nrcc;
          double *slot = part + ((bi * nct + ct) * nrc + rc) * n * sw;
          for (long rt = lmax(rc * RB_CH, rt0); rt < lmin(lmin(nrt, (rc + 1) * RB_CH), rt1); rt++) {
            const long m0 = rt * MR, o0 = ct * NR, base = bi * M * N;
            const int rows = (int)lmin(MR, M - m0), cols = (int)lmin(NR, N - o0);
            const int32_t *a = ap + (bi * nrt + rt) * kp2 * MR, *b = bp + (bi * nct + ct) * kp2 * NR;
            int32_t c[MT] __attribute__((aligned(64)));
            T acc[MT], pend[MT], gt[MT], gv[MT], ga[MT], un[NR], sv[NR], isv[NR];
            double tb[MT];
            int16_t bb[MT];
            uint64_t zw[MT]; /* zero-gradient tiles of the current 64-tile word, one bit per tile */
            uint64_t *zrow = zb + (m0 - m_lo) * N * Wz; /* the chunk's bits of row m0 */
            const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5, zero = (T)0;
            for (int j = 0; j < NR; j++) un[j] = o0 + j < N ? unit[o0 + j] : (T)0;
            int bbany = 0, written = 0; /* written: this block's zero-gradient bits were stored */
            if (rows == MR && cols == NR) { /* a whole block: row copies the compiler vectorises */
                for (int r = 0; r < MR; r++) {
                    const long ge = base + (m0 + r) * N + o0;
                    memcpy(gt + r * NR, g + ge, NR * sizeof(T));
                    if (apsq && lb8)
                        for (int j = 0; j < NR; j++) bb[r * NR + j] = ((const uint8_t *)lb)[ge + j];
                    else if (apsq)
                        memcpy(bb + r * NR, (const int16_t *)lb + ge, NR * sizeof(int16_t));
                }
                if (!apsq) memset(bb, 0, sizeof bb);
            } else {
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < NR; j++) {
                        const int e = r * NR + j, in = r < rows && j < cols;
                        const long ge = base + (m0 + r) * N + o0 + j;
                        gt[e] = in ? g[ge] : zero;
                        bb[e] = (int16_t)(in && apsq ? bad_at(lb, lb8, ge) : 0);
                    }
            }
            for (int e = 0; e < MT; e++) bbany |= bb[e];
#if APSQ_SIMD == 2 && T_F32
            const __m256 vun[2] = {_mm256_loadu_ps(un), _mm256_loadu_ps(un + 8)};
            const __m256 vqn = _mm256_set1_ps(fqn), vqp = _mm256_set1_ps(fqp);
            double gtd[MT], gvd[MT], gad[MT]; /* g reaching a tile, v_h and A_h, in double */
            const double *gvp = gtd, *gap = gtd; /* while no closing step saturated: g */
            __m256d ca[4];
            for (int e = 0; e < MT; e++) gtd[e] = (double)gt[e];
#endif
            long g0 = 0, h = 0;
            for (long i = 0; i < n; i++) {
                if (i % 64 == 0) memset(zw, 0, sizeof zw);
                tile_product(a + i * tp2 * MR, b + i * tp2 * NR, tp2, c);
                const T s = (T)sd[CS ? 0 : i], is = (T)si[CS ? 0 : i]; /* per tensor */
                if (CS) SUF(tile_steps)(sdt, sit, i, o0, N, sv, isv);
                const long l = apsq ? lmin(g0 + gs, n) - 1 : n; /* psq: every tile on its own */
#if APSQ_SIMD == 2 && T_F32
                __m256 vis[2], vs[2];
                for (int hh = 0; hh < 2; hh++) {
                    vis[hh] = CS ? _mm256_loadu_ps(isv + 8 * hh) : _mm256_set1_ps(is);
                    vs[hh] = CS ? _mm256_loadu_ps(sv + 8 * hh) : _mm256_set1_ps(s);
                }
                if (apsq && i == g0 && bbany) {
                    for (int e = 0; e < MT; e++) {
                        gvd[e] = bb[e] <= h ? gtd[e] : 0.0;
                        gad[e] = bb[e] <= h + 1 ? gtd[e] : 0.0;
                    }
                    gvp = gvd;
                    gap = gad;
                }
                if (i < l) v_bwd_pending(c, vun, vis, vs, pend, i == g0, apsq ? gvp : gtd, zw, i, ca, vqn, vqp);
                else v_bwd_closing(c, vun, vis, vs, pend, acc, l > g0, h > 0, gap, ca, vqn, vqp);
                if (CS) v_cols(ca, slot + i * NR);
                else slot[i] += v_sum4(ca);
                if (i % 64 == 63 || i == n - 1) zany |= store_zero_bits(zrow, zw, bb, bbany, i / 64, Wz, n, gs, o0, N, rows, cols, &written);
                if (i >= l) {
                    g0 = l + 1;
                    h++;
                }
                continue;
#endif
                if (apsq && i == g0)
                    for (int e = 0; e < MT; e++) {
                        gv[e] = bb[e] <= h ? gt[e] : zero;     /* reaching v_h, its tiles and A_{h-1} */
                        ga[e] = bb[e] <= h + 1 ? gt[e] : zero; /* reaching A_h */
                    }
                if (i < l) {
                    const T *gi = apsq ? gv : gt;
                    const int first = i == g0;
                    for (int r = 0; r < MR; r++)
                        for (int j = 0; j < NR; j++) {
                            const int e = r * NR + j;
                            const T u = ((T)c[e] * un[j]) * (CS ? isv[j] : is);
                            const T x = FLOOR(u + half);
                            const int m = x >= fqn && x <= fqp;
                            const T cc = x < fqn ? fqn : (x > fqp ? fqp : x);
                            zw[e] |= (uint64_t)!m << (i % 64);
                            tb[e] = (double)gi[e] * (double)(cc - (m ? u : zero)); /* exact: |cc - u| <= 1/2 (Sterbenz) */
                            const T q = cc * (CS ? sv[j] : s);
                            pend[e] = first ? q : pend[e] + q;
                        }
                    if (CS) col_sums(tb, slot + i * NR);
                    else slot[i] += block_sum(tb);
                    if (i % 64 == 63 || i == n - 1) zany |= store_zero_bits(zrow, zw, bb, bbany, i / 64, Wz, n, gs, o0, N, rows, cols, &written);
                    continue;
                }
                const int hp = l > g0, ha = h > 0;
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < NR; j++) {
                        const int e = r * NR + j;
                        const T u = SUF(closing_value)(c[e], un[j], pend[e], acc[e], hp, ha) * (CS ? isv[j] : is);
                        const T x = FLOOR(u + half);
                        const int m = x >= fqn && x <= fqp;
                        const T cc = x < fqn ? fqn : (x > fqp ? fqp : x);
                        tb[e] = (double)ga[e] * (double)(cc - (m ? u : zero));
                        acc[e] = cc * (CS ? sv[j] : s);
                    }
                if (CS) col_sums(tb, slot + i * NR);
                else slot[i] += block_sum(tb);
                if (i % 64 == 63 || i == n - 1) zany |= store_zero_bits(zrow, zw, bb, bbany, i / 64, Wz, n, gs, o0, N, rows, cols, &written);
                g0 = l + 1;
                h++;
            }
            zf[(rt - rt0) * nct + ct] = (uint8_t)written;
          }
        }
        if (zany) flagged += SUF(correct_rows)(bi, M, N, n, t, m_lo, m_hi, g, zb, zf, xf, wf, gx, gw, nthreads);
      }
    /* gsc = the job slots added in job order (per channel: per column) */
    if (CS) { /* per column block, its slots in (bi, rc) order; rows of gsc contiguous */
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (long ct = 0; ct < nct; ct++) {
            const long cols = lmin(NR, N - ct * NR);
            for (long bi = 0; bi < B; bi++)
                for (long rc = 0; rc < nrc; rc++) {
                    const double *col = part + ((bi * nct + ct) * nrc + rc) * n * NR;
                    for (long i = 0; i < n; i++)
                        for (long j = 0; j < cols; j++) gsc[i * N + ct * NR + j] += col[i * NR + j];
                }
        }
    } else {
        for (long job = 0; job < njobs; job++)
            for (long i = 0; i < n; i++) gsc[i] += part[job * n + i];
    }
    free(part);
    free(zf);
    free(ap);
    free(bp);
    free(sdt);
    free(sit);
    return flagged;
}
