/* dtype-generic part of psum_gemm.c: included once per T (float, double) with
 * T, FLOOR (floorf / floor) and SUF(name) (name_f32 / name_f64) defined.
 *
 * Per element the operations, their order and precision are those of csrc/psum_chunk_body.c (and so of
 * the reference loop): x * (1/s) for x / s (exact for the power-of-two steps the caller admits),
 * floor(u + 1/2), clamp, the pending sum ((P_0 + P_1) + ...), v = (Tp_l + pending) + A_{h-1}.
 * Arguments shared by the three functions:
 *   xa [B][M][n*te], wb [B][N][n*te]  int16 operand codes, tile i = columns [i*te, (i+1)*te);
 *                               output (b, m, o) = sum over k of xa[b][m][k] wb[b][o][k], stored at
 *                               e = (b * M + m) * N + o in out, last_bad, g and flag
 *   unit [N]                    value of one code product for output column o (sx * sw[o]), every batch
 *   sd, si [n][cs ? N : 1]      steps s_i (s_{i,o} per output column when cs = 1, per-channel
 *                               PSUM steps; cs = 0: one per tile step) and their reciprocals
 *   apsq, gs, qn, qp            mode (0 = psq), group size, code range
 *   lb, lb8                     last_bad [M][N] (uint8 when lb8, else int16): 1 + last group whose
 *                               closing requantization saturated, 0 if none */

/* v_h = (Tp_l + pending) + A_{h-1}: the value the closing step of a group quantizes (reference order);
 * Tp_l = c * unit is exact. */
/* Steps of tile i for the NR output columns [o0, o0 + NR) (columns past N get 1). */
static inline void SUF(tile_steps)(const double *sd, const double *si, long i, long o0, long N, long cs, T *sv,
                                   T *isv) {
    const long rs = cs ? N : 1;
    for (int j = 0; j < NR; j++) {
        const long o = cs ? o0 + j : 0;
        sv[j] = o < N ? (T)sd[i * rs + o] : (T)1;
        isv[j] = o < N ? (T)si[i * rs + o] : (T)1;
    }
}

static inline T SUF(closing_value)(int32_t c, T unit, T pend, T acc, int hp, int ha) {
    T v = (T)c * unit;
    if (hp) v = v + pend;
    if (ha) v = v + acc;
    return v;
}

/* Forward: out [M][N] and, for apsq, last_bad. Returns 0 when out of memory. */
int SUF(apsq_gemm_fwd)(const int16_t *xa, const int16_t *wb, long B, long M, long N, long n, long te, const T *unit,
                       const double *sd, const double *si, long cs, int apsq, int gs, int qn, int qp, T *out, void *lb,
                       int lb8, int nthreads) {
    const long Kp = n * te, kp2 = Kp / 2, tp2 = te / 2;
    const long nrt = (M + MR - 1) / MR, nct = (N + NR - 1) / NR;
    int32_t *ap, *bp;
    if (!pack_operands(xa, wb, B, M, N, Kp, &ap, &bp, nthreads)) return 0;
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
        memset(bad, 0, sizeof(bad));
        memset(acc, 0, sizeof(acc)); /* read (not used) by the first tile's select */
        memset(pend, 0, sizeof(pend));
        long g0 = 0, h = 0;
        for (long i = 0; i < n; i++) {
            tile_product(a + i * tp2 * MR, b + i * tp2 * NR, tp2, c);
            SUF(tile_steps)(sd, si, i, o0, N, cs, sv, isv);
            /* psq quantizes every tile on its own into one sum; apsq a group's pending tiles */
            const long l = apsq ? lmin(g0 + gs, n) - 1 : n;
            if (i < l) {
                T *restrict sum = apsq ? pend : acc;
                const T keep = i == g0 ? (T)0 : (T)1; /* the first tile of a sum starts it */
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < NR; j++) {
                        const int e = r * NR + j;
                        T x = FLOOR(((T)c[e] * un[j]) * isv[j] + half);
                        x = x < fqn ? fqn : (x > fqp ? fqp : x);
                        const T q = x * sv[j];
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
                    T x = FLOOR(v * isv[j] + half);
                    bad[e] = x < fqn || x > fqp ? hp1 : bad[e];
                    x = x < fqn ? fqn : (x > fqp ? fqp : x);
                    acc[e] = x * sv[j];
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
    return 1;
}

/* Backward, first pass: the LSQ step-size gradients gsc [n][cs ? N : 1] (double) for the output
 * gradient g [M][N], and flag [M][N] = 1 where some tile's gradient is not g itself (a pending tile or a
 * later closing step saturated). With u = v/s, r = floor(u + 1/2), m = (qn <= r <= qp),
 * c = clamp(r): dL/ds_i = sum g_i * (c - m * u) over every element (per tensor) or over the
 * elements of column o (dL/ds_{i,o}, per channel), g_i the gradient reaching step i's quantizer.
 * Per channel, each job (a block of NR columns and RB_CH row blocks of one product) sums its rows in
 * order into its own slot, and the slots are added per column in job order: the result does not
 * depend on the thread count. Returns 0 when out of memory. */
int SUF(apsq_gemm_bwd)(const int16_t *xa, const int16_t *wb, long B, long M, long N, long n, long te, const T *unit,
                       const double *sd, const double *si, long cs, int apsq, int gs, int qn, int qp, const T *g,
                       const void *lb, int lb8, double *gsc, uint8_t *flag, int nthreads) {
    const long Kp = n * te, kp2 = Kp / 2, tp2 = te / 2;
    const long nrt = (M + MR - 1) / MR, nct = (N + NR - 1) / NR;
    const long rb = cs ? RB_CH : 1, nrc = (nrt + rb - 1) / rb, njobs = B * nrc * nct;
    int32_t *ap, *bp;
    double *part = NULL; /* per channel: [njobs][n][NR] column sums of each job */
    if (cs && !(part = (double *)calloc((size_t)njobs * n * NR, sizeof(double)))) return 0;
    if (!pack_operands(xa, wb, B, M, N, Kp, &ap, &bp, nthreads)) {
        free(part);
        return 0;
    }
    memset(gsc, 0, n * (cs ? N : 1) * sizeof(double));
#pragma omp parallel num_threads(nthreads)
    {
        double *loc = (double *)calloc(n, sizeof(double));
#pragma omp for schedule(static)
        for (long job = 0; job < njobs; job++) {
          const long bi = job / (nrc * nct), ct = job % (nrc * nct) / nrc, rc = job % nrc;
          double *col = cs ? part + job * n * NR : NULL;
          for (long rt = rc * rb; rt < lmin(nrt, (rc + 1) * rb); rt++) {
            const long m0 = rt * MR, o0 = ct * NR, base = bi * M * N;
            const int rows = (int)lmin(MR, M - m0), cols = (int)lmin(NR, N - o0);
            const int32_t *a = ap + (bi * nrt + rt) * kp2 * MR, *b = bp + (bi * nct + ct) * kp2 * NR;
            int32_t c[MT] __attribute__((aligned(64)));
            T acc[MT], pend[MT], gt[MT], gv[MT], ga[MT], un[NR], sv[NR], isv[NR];
            double tb[MT];
            int16_t bb[MT];
            uint8_t fl[MT];
            const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5, zero = (T)0;
            for (int j = 0; j < NR; j++) un[j] = o0 + j < N ? unit[o0 + j] : (T)0;
            for (int r = 0; r < MR; r++)
                for (int j = 0; j < NR; j++) {
                    const int e = r * NR + j, in = r < rows && j < cols;
                    const long ge = base + (m0 + r) * N + o0 + j;
                    gt[e] = in ? g[ge] : zero;
                    bb[e] = (int16_t)(in && apsq ? bad_at(lb, lb8, ge) : 0);
                    fl[e] = bb[e] != 0;
                }
            long g0 = 0, h = 0;
            for (long i = 0; i < n; i++) {
                tile_product(a + i * tp2 * MR, b + i * tp2 * NR, tp2, c);
                SUF(tile_steps)(sd, si, i, o0, N, cs, sv, isv);
                const long l = apsq ? lmin(g0 + gs, n) - 1 : n; /* psq: every tile on its own */
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
                            const T u = ((T)c[e] * un[j]) * isv[j];
                            const T x = FLOOR(u + half);
                            const int m = x >= fqn && x <= fqp;
                            const T cc = x < fqn ? fqn : (x > fqp ? fqp : x);
                            fl[e] |= (uint8_t)!m;
                            tb[e] = (double)gi[e] * (double)(cc - (m ? u : zero)); /* exact: |cc - u| <= 1/2 (Sterbenz) */
                            const T q = cc * sv[j];
                            pend[e] = first ? q : pend[e] + q;
                        }
                    if (cs) col_sums(tb, col + i * NR);
                    else loc[i] += block_sum(tb);
                    continue;
                }
                const int hp = l > g0, ha = h > 0;
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < NR; j++) {
                        const int e = r * NR + j;
                        const T u = SUF(closing_value)(c[e], un[j], pend[e], acc[e], hp, ha) * isv[j];
                        const T x = FLOOR(u + half);
                        const int m = x >= fqn && x <= fqp;
                        const T cc = x < fqn ? fqn : (x > fqp ? fqp : x);
                        tb[e] = (double)ga[e] * (double)(cc - (m ? u : zero));
                        acc[e] = cc * sv[j];
                    }
                if (cs) col_sums(tb, col + i * NR);
                else loc[i] += block_sum(tb);
                g0 = l + 1;
                h++;
            }
            for (int r = 0; r < rows; r++) memcpy(flag + base + (m0 + r) * N + o0, fl + r * NR, cols);
          }
        }
        if (!cs) {
#pragma omp critical
            for (long i = 0; i < n; i++) gsc[i] += loc[i];
        }
        free(loc);
    }
    if (cs) { /* gsc[i][o] = sum over (product, row chunk) of the job slots, in job order */
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (long o = 0; o < N; o++) {
            const long ct = o / NR, j = o % NR;
            for (long bi = 0; bi < B; bi++)
                for (long rc = 0; rc < nrc; rc++) {
                    const double *col = part + ((bi * nct + ct) * nrc + rc) * n * NR;
                    for (long i = 0; i < n; i++) gsc[i * N + o] += col[i * NR + j];
                }
        }
    }
    free(part);
    free(ap);
    free(bp);
    return 1;
}

/* Backward, second pass: the operand gradients were computed as g @ W and g^T @ x, as if every tile
 * received g. For each flagged output e = idx[f] (row-major m * N + o, ascending) this subtracts
 * g[e] * W[o, tile i] from gx[m, tile i] and g[e] * x[m, tile i] from gw[o, tile i] for every tile i
 * whose gradient is 0 instead: psq, tile i saturated; apsq, tile i lies in a group before
 * last_bad[e], or is a pending tile that saturated. xf [M][n*t], wf [N][n*t] are the float operands
 * and gx, gw the gradients (same layout; either may be NULL). Rows of gx are updated by one thread
 * each, in f order; rows of gw likewise, in f order within a column: the result does not depend on
 * the thread count. Returns 0 when out of memory. */
int SUF(apsq_gemm_correct)(const int16_t *xa, const int16_t *wb, long B, long M, long N, long n, long te, long t,
                           const T *unit, const double *si, long cs, int apsq, int gs, int qn, int qp, const T *g,
                           const void *lb, int lb8, const int64_t *idx, long F, const T *xf, const T *wf, T *gx,
                           T *gw, int nthreads) {
    const long Kp = n * te, Kt = n * t, W = (n + 63) / 64;
    const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5;
    uint64_t *zm = (uint64_t *)calloc((size_t)(F ? F : 1) * W, sizeof(uint64_t));
    long *colptr = (long *)calloc(B * N + 1, sizeof(long));
    long *perm = (long *)malloc((size_t)(F ? F : 1) * sizeof(long));
    if (!zm || !colptr || !perm) {
        free(zm);
        free(colptr);
        free(perm);
        return 0;
    }
    /* zero-gradient tiles of every flagged output, one bit per tile */
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long f = 0; f < F; f++) {
        const long e = idx[f], m = e / N, o = (e / (M * N)) * N + e % N; /* rows of xa / wb */
        const int bad = apsq ? bad_at(lb, lb8, e) : 0;
        const long so = cs ? e % N : 0, rs = cs ? N : 1; /* this output's column in si [n][N] */
        uint64_t *bits = zm + f * W;
        for (long i = 0; i < n; i++) {
            const long h = i / gs, l = lmin((h + 1) * gs, n) - 1;
            int zero;
            if (apsq && h < bad) zero = 1;
            else if (apsq && i == l) zero = 0;
            else {
                const T u = ((T)dot16(xa + m * Kp + i * te, wb + o * Kp + i * te, te) * unit[o % N]) * (T)si[i * rs + so];
                const T x = FLOOR(u + half);
                zero = !(x >= fqn && x <= fqp);
            }
            if (zero) bits[i / 64] |= (uint64_t)1 << (i % 64);
        }
    }
    if (gx) {
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16)
        for (long m = 0; m < B * M; m++) {
            const long f1 = lower_bound(idx, F, (int64_t)(m + 1) * N);
            for (long f = lower_bound(idx, F, (int64_t)m * N); f < f1; f++) {
                const long o = (idx[f] / (M * N)) * N + idx[f] % N;
                const T ge = g[idx[f]];
                for (long i = 0; i < n; i++) {
                    if (!((zm[f * W + i / 64] >> (i % 64)) & 1)) continue;
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
                free(zm);
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
                for (long i = 0; i < n; i++) {
                    if (!((zm[f * W + i / 64] >> (i % 64)) & 1)) continue;
                    T *dst = gw + o * Kt + i * t;
                    const T *src = xf + m * Kt + i * t;
                    for (long k = 0; k < t; k++) dst[k] = dst[k] - ge * src[k];
                }
            }
        }
    }
    free(zm);
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
