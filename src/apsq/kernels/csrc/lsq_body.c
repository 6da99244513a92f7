/* y = Q_s(x). */
void SUF(lsq_fwd)(const T *x, long C, long inner, const double *sd, const double *si, int qn, int qp, T *y,
                  int nthreads) {
    const long nch = (inner + LSQ_CHUNK - 1) / LSQ_CHUNK;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long job = 0; job < C * nch; job++) {
        const long c = job / nch, k0 = (job % nch) * LSQ_CHUNK, kn = lsq_min(LSQ_CHUNK, inner - k0);
        const T s = (T)sd[c], is = (T)si[c], fqn = (T)qn, fqp = (T)qp, half = (T)0.5;
        const T *xs = x + c * inner + k0;
        T *ys = y + c * inner + k0;
        for (long k = 0; k < kn; k++) {
            T r = FLOOR(xs[k] * is + half);
            r = r < fqn ? fqn : (r > fqp ? fqp : r);
            ys[k] = r * s;
        }
    }
}

/* gx = dL/dx (may be NULL), gs[c] = dL/ds_c. Returns 0 when out of memory. */
int SUF(lsq_bwd)(const T *x, const T *g, long C, long inner, const double *sd, const double *si, int qn, int qp,
                 T *gx, double *gs, int nthreads) {
    const long nch = (inner + LSQ_CHUNK - 1) / LSQ_CHUNK;
    double *part = (double *)malloc((size_t)(C * nch > 0 ? C * nch : 1) * sizeof(double));
    if (!part) return 0;
    (void)sd;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long job = 0; job < C * nch; job++) {
        const long c = job / nch, k0 = (job % nch) * LSQ_CHUNK, kn = lsq_min(LSQ_CHUNK, inner - k0);
        const T is = (T)si[c], fqn = (T)qn, fqp = (T)qp, half = (T)0.5, zero = (T)0;
        const T *xs = x + c * inner + k0, *gg = g + c * inner + k0;
        T *gxs = gx ? gx + c * inner + k0 : 0;
        double acc[16] = {0};
        long k = 0;
#if defined(__AVX2__) && T_F32
        { /* 8 at a time in AVX2: the same operations (the clamp as max / min, equal: no NaN reaches it) */
            const __m256 vis = _mm256_set1_ps(is), vqn = _mm256_set1_ps(fqn), vqp = _mm256_set1_ps(fqp),
                         vhalf = _mm256_set1_ps(half);
            __m256d a0 = _mm256_setzero_pd(), a1 = a0;
            for (; k + 8 <= kn; k += 8) {
                const __m256 u = _mm256_mul_ps(_mm256_loadu_ps(xs + k), vis);
                const __m256 r = _mm256_floor_ps(_mm256_add_ps(u, vhalf));
                const __m256 m = _mm256_and_ps(_mm256_cmp_ps(r, vqn, _CMP_GE_OQ), _mm256_cmp_ps(r, vqp, _CMP_LE_OQ));
                const __m256 cc = _mm256_min_ps(_mm256_max_ps(r, vqn), vqp), gv = _mm256_loadu_ps(gg + k);
                if (gxs) _mm256_storeu_ps(gxs + k, _mm256_and_ps(m, gv));
                const __m256 d = _mm256_sub_ps(cc, _mm256_and_ps(m, u));
                /* exact products in double: mul then add */
                a0 = _mm256_add_pd(a0, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(gv)),
                                                     _mm256_cvtps_pd(_mm256_castps256_ps128(d))));
                a1 = _mm256_add_pd(a1, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1)),
                                                     _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1))));
            }
            _mm256_storeu_pd(acc, a0);
            _mm256_storeu_pd(acc + 4, a1);
        }
#endif
        for (; k + 16 <= kn; k += 16)
            for (int q = 0; q < 16; q++) {
                const T u = xs[k + q] * is, r = FLOOR(u + half);
                const int m = r >= fqn && r <= fqp;
                const T cc = r < fqn ? fqn : (r > fqp ? fqp : r);
                if (gxs) gxs[k + q] = m ? gg[k + q] : zero;
                acc[q] += (double)gg[k + q] * (double)(cc - (m ? u : zero)); /* exact: |cc - u| <= 1/2 */
            }
        for (; k < kn; k++) {
            const T u = xs[k] * is, r = FLOOR(u + half);
            const int m = r >= fqn && r <= fqp;
            const T cc = r < fqn ? fqn : (r > fqp ? fqp : r);
            if (gxs) gxs[k] = m ? gg[k] : zero;
            acc[0] += (double)gg[k] * (double)(cc - (m ? u : zero));
        }
        double sum = 0.0;
        for (int q = 0; q < 16; q++) sum += acc[q];
        part[job] = sum;
    }
    for (long c = 0; c < C; c++) {
        double sum = 0.0;
        for (long j = 0; j < nch; j++) sum += part[c * nch + j];
        gs[c] = sum;
    }
    free(part);
    return 1;
}
