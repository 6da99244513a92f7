/* The PSUM chunk kernel (psq / apsq accumulation of given tile partial sums), forward and backward.

Instantiated once per dtype by apsq.kernels.build.instantiate (T = float / double, FLOOR = floorf /
floor, SUF(name) = name_f32 / name_f64), after psum_chunk.c. Entry points (declared once, with typed
arguments, in apsq/kernels/chunk.py):

  SUF(apsq_fwd)(p[n*E], n, E, sd[n], si[n], apsq, gs, qn, qp, out[E], lb[E], lb8, nthreads)
  SUF(apsq_bwd)(p[n*E], n, E, sd[n], si[n], apsq, gs, qn, qp, g[E], lb[E], lb8, gp[n*E], gsc[n], flag[E], nthreads)

One pass per block of BLK output elements: the n tile steps in order, the running values in L1. */
void SUF(apsq_fwd)(const T *p, long n, long E, const double *sd, const double *si, int apsq, int gs,
                    int qn, int qp, T *out, void *lb, int lb8, int nthreads) {
    long nblk = (E + BLK - 1) / BLK;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long b = 0; b < nblk; b++) {
        long e0 = b * BLK, be = lmin(BLK, E - e0);
        T acc[BLK], pend[BLK];
        int16_t bad[BLK];
        const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5;
        if (!apsq) {
            for (long i = 0; i < n; i++) {
                const T s = (T)sd[i], is = (T)si[i];
                const T *row = p + i * E + e0;
                for (long k = 0; k < be; k++) {
                    T r = FLOOR(row[k] * is + half);
                    r = r < fqn ? fqn : (r > fqp ? fqp : r);
                    T q = r * s;
                    acc[k] = i == 0 ? q : acc[k] + q;
                }
            }
            memcpy(out + e0, acc, be * sizeof(T));
            continue;
        }
        memset(bad, 0, sizeof(bad));
        int h = 0;
        for (long g0 = 0; g0 < n; g0 += gs, h++) {
            long l = lmin(g0 + gs, n) - 1;
            for (long j = g0; j < l; j++) {
                const T s = (T)sd[j], is = (T)si[j];
                const T *row = p + j * E + e0;
                for (long k = 0; k < be; k++) {
                    T r = FLOOR(row[k] * is + half);
                    r = r < fqn ? fqn : (r > fqp ? fqp : r);
                    T q = r * s;
                    pend[k] = j == g0 ? q : pend[k] + q;
                }
            }
            const T s = (T)sd[l], is = (T)si[l];
            const T *row = p + l * E + e0;
            const int hp = l > g0, ha = h > 0;
            for (long k = 0; k < be; k++) {
                T v = row[k];
                if (hp) v = v + pend[k];
                if (ha) v = v + acc[k];
                T r = FLOOR(v * is + half);
                if (r < fqn || r > fqp) bad[k] = (int16_t)(h + 1);
                r = r < fqn ? fqn : (r > fqp ? fqp : r);
                acc[k] = r * s;
            }
        }
        memcpy(out + e0, acc, be * sizeof(T));
        bad_store(lb, lb8, e0, be, bad);
    }
}

void SUF(apsq_bwd)(const T *p, long n, long E, const double *sd, const double *si, int apsq, int gs,
                    int qn, int qp, const T *g, const void *lb, int lb8, T *gp, double *gsc,
                    uint8_t *flag, int nthreads) {
    long nblk = (E + BLK - 1) / BLK;
    memset(gsc, 0, n * sizeof(double));
    #pragma omp parallel num_threads(nthreads)
    {
    double loc[n];
    memset(loc, 0, n * sizeof(double));
    #pragma omp for schedule(static)
    for (long b = 0; b < nblk; b++) {
        long e0 = b * BLK, be = lmin(BLK, E - e0);
        T acc[BLK], pend[BLK], gv[BLK], ga[BLK];
        double tb[BLK];
        int16_t bb[BLK];
        uint8_t fl[BLK];
        const T fqn = (T)qn, fqp = (T)qp, half = (T)0.5, zero = (T)0;
        const T *gb = g + e0;
        memset(fl, 0, sizeof(fl));
        if (!apsq) {
            for (long i = 0; i < n; i++) {
                const T s = (T)sd[i], is = (T)si[i];
                const T *row = p + i * E + e0;
                T *grow = gp ? gp + i * E + e0 : 0;
                for (long k = 0; k < be; k++) {
                    T u = row[k] * is;
                    T r = FLOOR(u + half);
                    int m = r >= fqn && r <= fqp;
                    T c = r < fqn ? fqn : (r > fqp ? fqp : r);
                    if (gp) grow[k] = m ? gb[k] : zero;
                    fl[k] |= (uint8_t)!m;
                    tb[k] = (double)gb[k] * ((double)c - (m ? (double)u : 0.0));
                }
                loc[i] += block_sum(tb, be);
            }
            if (flag) memcpy(flag + e0, fl, be);
            continue;
        }
        bad_load(bb, lb, lb8, e0, be);
        for (long k = 0; k < be; k++) fl[k] = bb[k] != 0;
        int h = 0;
        for (long g0 = 0; g0 < n; g0 += gs, h++) {
            long l = lmin(g0 + gs, n) - 1;
            for (long k = 0; k < be; k++) {
                gv[k] = bb[k] <= h ? gb[k] : zero;
                ga[k] = bb[k] <= h + 1 ? gb[k] : zero;
            }
            for (long j = g0; j < l; j++) {
                const T s = (T)sd[j], is = (T)si[j];
                const T *row = p + j * E + e0;
                T *grow = gp ? gp + j * E + e0 : 0;
                for (long k = 0; k < be; k++) {
                    T u = row[k] * is;
                    T r = FLOOR(u + half);
                    int m = r >= fqn && r <= fqp;
                    T c = r < fqn ? fqn : (r > fqp ? fqp : r);
                    if (gp) grow[k] = m ? gv[k] : zero;
                    fl[k] |= (uint8_t)!m;
                    tb[k] = (double)gv[k] * ((double)c - (m ? (double)u : 0.0));
                    T q = c * s;
                    pend[k] = j == g0 ? q : pend[k] + q;
                }
                loc[j] += block_sum(tb, be);
            }
            const T s = (T)sd[l], is = (T)si[l];
            const T *row = p + l * E + e0;
            T *grow = gp ? gp + l * E + e0 : 0;
            const int hp = l > g0, ha = h > 0;
            for (long k = 0; k < be; k++) {
                T v = row[k];
                if (hp) v = v + pend[k];
                if (ha) v = v + acc[k];
                T u = v * is;
                T r = FLOOR(u + half);
                int m = r >= fqn && r <= fqp;
                T c = r < fqn ? fqn : (r > fqp ? fqp : r);
                if (gp) grow[k] = gv[k];
                tb[k] = (double)ga[k] * ((double)c - (m ? (double)u : 0.0));
                acc[k] = c * s;
            }
            loc[l] += block_sum(tb, be);
        }
        if (flag) memcpy(flag + e0, fl, be);
    }
    #pragma omp critical
    for (long i = 0; i < n; i++) gsc[i] += loc[i];
    }
}
