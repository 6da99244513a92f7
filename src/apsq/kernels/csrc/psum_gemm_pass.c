/* The forward and the step-gradient pass of psum_gemm_body.c, as a template: included once per dtype
 * (T, FLOOR, SUF as there) and per step layout, with CS = 0 (one PSUM step per tile step, a broadcast
 * scalar: the per-tensor code as it was) or CS = 1 (per-channel steps sd, si [n][N], one per tile step
 * and output column), and PASS(name) naming the instance (name_tensor_f32, name_lanes_f64, ...). The
 * Python loader (apsq.kernels.int_gemm.source) writes the instances; the entry points in
 * psum_gemm_body.c call the one for their cs. Arguments as in psum_gemm_body.c. */
#if !CS
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

/* v_h = (Tp_l + pending) + A_{h-1}: the value the closing step of a group quantizes (reference order);
 * Tp_l = c * unit is exact. */
static inline T SUF(closing_value)(int32_t c, T unit, T pend, T acc, int hp, int ha) {
    T v = (T)c * unit;
    if (hp) v = v + pend;
    if (ha) v = v + acc;
    return v;
}

#endif

/* Forward: out [M][N] and, for apsq, last_bad. Returns 0 when out of memory. */
static int PASS(gemm_fwd)(const int16_t *xa, const int16_t *wb, long B, long M, long N, long n, long te, const T *unit,
                       const double *sd, const double *si, int apsq, int gs, int qn, int qp, T *out, void *lb,
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
            const T s = (T)sd[CS ? 0 : i], is = (T)si[CS ? 0 : i]; /* per tensor */
            if (CS) SUF(tile_steps)(sd, si, i, o0, N, CS, sv, isv);
            /* psq quantizes every tile on its own into one sum; apsq a group's pending tiles */
            const long l = apsq ? lmin(g0 + gs, n) - 1 : n;
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
    return 1;
}

/* Backward, first pass: the LSQ step-size gradients gsc [n][CS ? N : 1] (double) for the output
 * gradient g [M][N], and zb [M][N][Wz] = the tiles whose gradient is not g itself (a pending tile or a
 * later closing step saturated). With u = v/s, r = floor(u + 1/2), m = (qn <= r <= qp),
 * c = clamp(r): dL/ds_i = sum g_i * (c - m * u) over every element (per tensor) or over the
 * elements of column o (dL/ds_{i,o}, per channel), g_i the gradient reaching step i's quantizer.
 * Per channel, each job (a block of NR columns and RB_CH row blocks of one product) sums its rows in
 * order into its own slot, and the slots are added per column in job order: the result does not
 * depend on the thread count. Returns 0 when out of memory. */
static int PASS(gemm_bwd)(const int16_t *xa, const int16_t *wb, long B, long M, long N, long n, long te, const T *unit,
                       const double *sd, const double *si, int apsq, int gs, int qn, int qp, const T *g,
                       const void *lb, int lb8, double *gsc, uint64_t *zb, int nthreads) {
    const long Kp = n * te, kp2 = Kp / 2, tp2 = te / 2, Wz = (n + 63) / 64;
    const long nrt = (M + MR - 1) / MR, nct = (N + NR - 1) / NR;
    const long rb = CS ? RB_CH : 1, nrc = (nrt + rb - 1) / rb, njobs = B * nrc * nct;
    int32_t *ap, *bp;
    double *part = NULL; /* per channel: [njobs][n][NR] column sums of each job */
    if (CS && !(part = (double *)calloc((size_t)njobs * n * NR, sizeof(double)))) return 0;
    if (!pack_operands(xa, wb, B, M, N, Kp, &ap, &bp, nthreads)) {
        free(part);
        return 0;
    }
    memset(gsc, 0, n * (CS ? N : 1) * sizeof(double));
#pragma omp parallel num_threads(nthreads)
    {
        double *loc = (double *)calloc(n, sizeof(double));
#pragma omp for schedule(static)
        for (long job = 0; job < njobs; job++) {
          const long bi = job / (nrc * nct), ct = job % (nrc * nct) / nrc, rc = job % nrc;
          double *col = CS ? part + job * n * NR : NULL;
          for (long rt = rc * rb; rt < lmin(nrt, (rc + 1) * rb); rt++) {
            const long m0 = rt * MR, o0 = ct * NR, base = bi * M * N;
            const int rows = (int)lmin(MR, M - m0), cols = (int)lmin(NR, N - o0);
            const int32_t *a = ap + (bi * nrt + rt) * kp2 * MR, *b = bp + (bi * nct + ct) * kp2 * NR;
            int32_t c[MT] __attribute__((aligned(64)));
            T acc[MT], pend[MT], gt[MT], gv[MT], ga[MT], un[NR], sv[NR], isv[NR];
            double tb[MT];
            int16_t bb[MT];
            uint64_t zw[MT]; /* zero-gradient tiles of the current 64-tile word, one bit per tile */
            const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5, zero = (T)0;
            for (int j = 0; j < NR; j++) un[j] = o0 + j < N ? unit[o0 + j] : (T)0;
            for (int r = 0; r < MR; r++)
                for (int j = 0; j < NR; j++) {
                    const int e = r * NR + j, in = r < rows && j < cols;
                    const long ge = base + (m0 + r) * N + o0 + j;
                    gt[e] = in ? g[ge] : zero;
                    bb[e] = (int16_t)(in && apsq ? bad_at(lb, lb8, ge) : 0);
                }
            long g0 = 0, h = 0;
            for (long i = 0; i < n; i++) {
                if (i % 64 == 0) memset(zw, 0, sizeof zw);
                tile_product(a + i * tp2 * MR, b + i * tp2 * NR, tp2, c);
                const T s = (T)sd[CS ? 0 : i], is = (T)si[CS ? 0 : i]; /* per tensor */
                if (CS) SUF(tile_steps)(sd, si, i, o0, N, CS, sv, isv);
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
                            const T u = ((T)c[e] * un[j]) * (CS ? isv[j] : is);
                            const T x = FLOOR(u + half);
                            const int m = x >= fqn && x <= fqp;
                            const T cc = x < fqn ? fqn : (x > fqp ? fqp : x);
                            zw[e] |= (uint64_t)!m << (i % 64);
                            tb[e] = (double)gi[e] * (double)(cc - (m ? u : zero)); /* exact: |cc - u| <= 1/2 (Sterbenz) */
                            const T q = cc * (CS ? sv[j] : s);
                            pend[e] = first ? q : pend[e] + q;
                        }
                    if (CS) col_sums(tb, col + i * NR);
                    else loc[i] += block_sum(tb);
                    if (i % 64 == 63 || i == n - 1) store_zero_bits(zb, zw, bb, i / 64, Wz, n, gs, base + m0 * N + o0, N, rows, cols);
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
                if (CS) col_sums(tb, col + i * NR);
                else loc[i] += block_sum(tb);
                if (i % 64 == 63 || i == n - 1) store_zero_bits(zb, zw, bb, i / 64, Wz, n, gs, base + m0 * N + o0, N, rows, cols);
                g0 = l + 1;
                h++;
            }
          }
        }
        if (!CS) {
#pragma omp critical
            for (long i = 0; i < n; i++) gsc[i] += loc[i];
        }
        free(loc);
    }
    if (CS) { /* gsc[i][o] = sum over (product, row chunk) of the job slots, in job order */
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

