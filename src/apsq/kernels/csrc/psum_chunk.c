/* Prologue of the PSUM chunk kernel (psum_chunk_body.c): block size and block helpers. */
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

