/* LSQ fake quantization with power-of-two steps, forward and backward in one pass each.
 *
 * Q_s(x) = s * clamp(floor(x/s + 1/2), qn, qp) over x [C][inner] (channel c has step s_c; one
 * channel for a per-tensor step). x/s is computed as x * (1/s), the same number for the
 * power-of-two steps the caller admits. Backward, with u = x/s, r = floor(u + 1/2),
 * m = (qn <= r <= qp), c = clamp(r) and g the gradient reaching Q_s(x) (LSQ, Esser et al. 2020):
 *     dL/dx = g * m,        dL/ds_c = sum over channel c of g * (c - m * u),
 * the latter summed in double, chunk by chunk, in a fixed order (independent of the thread count).
 * The dtype-generic functions follow, instantiated per dtype by apsq.kernels.build.instantiate. */
#include <math.h>
#include <stdlib.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define LSQ_CHUNK 8192 /* elements per parallel job */

static inline long lsq_min(long a, long b) { return a < b ? a : b; }
