/* Fused float32 CPU kernels for Spartan's hot loops (see spartan_core/native/__init__.py).
 *
 * Each kernel is one pass over its inputs. Work is split into one contiguous range per
 * thread; every reduction keeps one partial per thread, summed in thread order by the caller's
 * thread, so results are deterministic for a given thread count. Inside a thread, float
 * partial sums over blocks of SUM_BLOCK entries are accumulated in double.
 *
 * Sigmoid saturates to exactly 0 or 1 (see sigmoid()), so no input gives inf or NaN.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else /* built without OpenMP: one thread (threads_for returns 1) */
static inline int omp_get_thread_num(void) { return 0; }
#endif

/* sigmoid(x) = 1 / (1 + exp(-x)) with a vectorisable exp: exp(z) = 2^k exp(r), r = z - k ln 2
 * in [-ln2/2, ln2/2] (Cody-Waite split of ln 2), exp(r) by the Cephes degree-6 polynomial
 * (about 1 ulp). z is clamped to [-86, 40] so that 2^k stays a normal float; sigmoid(x) for
 * x <= -40 (below 4.3e-18) is returned as exactly 0, so no denormal reaches later products. */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define MADD(a, b, c) fmaf(a, b, c)
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

/* Built with -ffp-contract=off: every fused multiply-add is written out, so each kernel
 * rounds the same way and the mask a kernel writes is bit-for-bit the one another computes. */
static inline float sigmoid(float x) {
    float z = -x;
    float zc = z < -86.0f ? -86.0f : (z > 40.0f ? 40.0f : z);
    float k = (zc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = MADD(k, -0.693359375f, zc);
    r = MADD(k, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = MADD(p, r, 1.3981999507e-3f);
    p = MADD(p, r, 8.3334519073e-3f);
    p = MADD(p, r, 4.1665795894e-2f);
    p = MADD(p, r, 1.6666665459e-1f);
    p = MADD(p, r, 5.0000001201e-1f);
    p = MADD(p, r * r, r) + 1.0f;
    int32_t bits;
    memcpy(&bits, &p, 4);
    bits += (int32_t)k << 23;
    memcpy(&p, &bits, 4);
    float m = 1.0f / (1.0f + p);
    return z >= 40.0f ? 0.0f : m;
}

#define BLOCK 1024
/* float partial sums cover this many entries (8 per SIMD lane): a longer run of equal terms
 * would bias a float accumulator */
#define SUM_BLOCK 128
#define MAX_THREADS 256

static inline void range_of(int64_t n, int nt, int t, int64_t *lo, int64_t *hi) {
    int64_t base = n / nt, extra = n % nt;
    *lo = t * base + (t < extra ? t : extra);
    *hi = *lo + base + (t < extra ? 1 : 0);
}

static inline int threads_for(int64_t n, int nt) {
#ifndef _OPENMP
    return 1;
#endif
    int64_t most = n / (64 * BLOCK) + 1; /* small inputs are not worth waking threads */
    if (nt > most) nt = (int)most;
    if (nt > MAX_THREADS) nt = MAX_THREADS;
    return nt < 1 ? 1 : nt;
}

/* Per-thread partials added in thread order: deterministic for a given thread count. */
static inline double sum_parts(const double *parts, int nt) {
    double total = 0.0;
    for (int t = 0; t < nt; t++) total += parts[t];
    return total;
}

static inline int64_t count_parts(const int64_t *parts, int nt) {
    int64_t total = 0;
    for (int t = 0; t < nt; t++) total += parts[t];
    return total;
}

/* out = |w| * scale; stats = {sum |w|, min bits of out, max bits of out} (as doubles). */
void sp_abs_scale(const float *w, float *out, int64_t n, float scale, int nt, double *stats) {
    nt = threads_for(n, nt);
    double sums[MAX_THREADS];
    int32_t lows[MAX_THREADS], highs[MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        double total = 0.0;
        int32_t low = INT32_MAX, high = INT32_MIN;
        for (int64_t b = lo; b < hi; b += SUM_BLOCK) {
            int64_t e = b + SUM_BLOCK < hi ? b + SUM_BLOCK : hi;
            float part = 0.0f;
#pragma omp simd reduction(+ : part) reduction(min : low) reduction(max : high)
            for (int64_t i = b; i < e; i++) {
                float a = fabsf(w[i]);
                float v = a * scale;
                int32_t bits;
                memcpy(&bits, &v, 4);
                part += a;
                out[i] = v;
                low = bits < low ? bits : low;
                high = bits > high ? bits : high;
            }
            total += part;
        }
        sums[t] = total;
        lows[t] = low;
        highs[t] = high;
    }
    double total = 0.0;
    int32_t low = INT32_MAX, high = INT32_MIN;
    for (int t = 0; t < nt; t++) {
        total += sums[t];
        low = lows[t] < low ? lows[t] : low;
        high = highs[t] > high ? highs[t] : high;
    }
    stats[0] = total;
    stats[1] = (double)low;
    stats[2] = (double)high;
}

/* out = v / c; bits = {min, max} of the bit patterns of out (signed: negatives and -0.0 come
 * out below 0, NaN and inf at or above the bits of inf). */
void sp_divide(const float *v, const float *c, float *out, int64_t n, int nt, int64_t *bits) {
    nt = threads_for(n, nt);
    int32_t lows[MAX_THREADS], highs[MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        int32_t low = INT32_MAX, high = INT32_MIN;
#pragma omp simd reduction(min : low) reduction(max : high)
        for (int64_t i = lo; i < hi; i++) {
            float q = v[i] / c[i];
            int32_t b;
            memcpy(&b, &q, 4);
            out[i] = q;
            low = b < low ? b : low;
            high = b > high ? b : high;
        }
        lows[t] = low;
        highs[t] = high;
    }
    int32_t low = INT32_MAX, high = INT32_MIN;
    for (int t = 0; t < nt; t++) {
        low = lows[t] < low ? lows[t] : low;
        high = highs[t] > high ? highs[t] : high;
    }
    bits[0] = low;
    bits[1] = high;
}

/* Keys the bit patterns of u against the window [start, start + 2^log_width):
 * result = {count (cost == NULL) or cost of the entries above the window, threads used}; the
 * indices of the
 * entries inside are written to idx[t * cap + j] by thread t, its count to counts[t] (a count
 * above cap means the thread ran out of room and wrote only cap indices). Blocks of 64 entries
 * are keyed with vector code; only blocks holding an inside entry are scanned one by one. */
void sp_partition(const float *u, const float *cost, int64_t n, int32_t start, int log_width,
                  int nt, double *result, int64_t *idx, int64_t cap, int64_t *counts) {
    nt = threads_for(n, nt);
    double above[MAX_THREADS];
    const int32_t *bits = (const int32_t *)u;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        double total = 0.0;
        int64_t found = 0;
        int64_t *mine = idx + t * cap;
        for (int64_t b = lo; b < hi; b += 64) {
            int64_t e = b + 64 < hi ? b + 64 : hi;
            int inside = 0;
            if (cost) {
                float part = 0.0f;
#pragma omp simd reduction(+ : part) reduction(| : inside)
                for (int64_t i = b; i < e; i++) {
                    int32_t key = (bits[i] - start) >> log_width;
                    part += key > 0 ? cost[i] : 0.0f;
                    inside |= key == 0;
                }
                total += part;
            } else {
                int32_t count = 0;
#pragma omp simd reduction(+ : count) reduction(| : inside)
                for (int64_t i = b; i < e; i++) {
                    int32_t key = (bits[i] - start) >> log_width;
                    count += key > 0;
                    inside |= key == 0;
                }
                total += count;
            }
            if (inside) {
                for (int64_t i = b; i < e; i++) {
                    if (((bits[i] - start) >> log_width) == 0) {
                        if (found < cap) mine[found] = i;
                        found++;
                    }
                }
            }
        }
        above[t] = total;
        counts[t] = found;
    }
    result[0] = sum_parts(above, nt);
    result[1] = (double)nt;
}

/* One block of sp_sigmoid_sums; the flags are constants after inlining, so each of the four
 * variants is its own branch-free vector loop. */
static inline void sigmoid_block(const float *u, const float *cost, int64_t k, int64_t e,
                                 float a, float b, float *out, const int has_cost,
                                 const int has_out, float *p1, float *p2) {
    float q1 = 0.0f, q2 = 0.0f;
#pragma omp simd reduction(+ : q1, q2)
    for (int64_t i = k; i < e; i++) {
        float m = sigmoid(MADD(a, u[i], b));
        if (has_out) out[i] = m;
        float cm = has_cost ? cost[i] * m : m;
        q1 += cm;
        q2 += cm * m;
    }
    *p1 = q1;
    *p2 = q2;
}

/* m = sigmoid(a * u + b), written to out when out != NULL;
 * sums = {sum c m, sum c m^2} with c = cost[i] or 1 (cost == NULL). */
void sp_sigmoid_sums(const float *u, const float *cost, int64_t n, float a, float b, float *out,
                     int nt, double *sums) {
    nt = threads_for(n, nt);
    double s1[MAX_THREADS], s2[MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        double t1 = 0.0, t2 = 0.0;
        for (int64_t k = lo; k < hi; k += SUM_BLOCK) {
            int64_t e = k + SUM_BLOCK < hi ? k + SUM_BLOCK : hi;
            float p1, p2;
            if (cost && out)
                sigmoid_block(u, cost, k, e, a, b, out, 1, 1, &p1, &p2);
            else if (cost)
                sigmoid_block(u, cost, k, e, a, b, out, 1, 0, &p1, &p2);
            else if (out)
                sigmoid_block(u, cost, k, e, a, b, out, 0, 1, &p1, &p2);
            else
                sigmoid_block(u, cost, k, e, a, b, out, 0, 0, &p1, &p2);
            t1 += p1;
            t2 += p2;
        }
        s1[t] = t1;
        s2[t] = t2;
    }
    sums[0] = sum_parts(s1, nt);
    sums[1] = sum_parts(s2, nt);
}

/* hard = u >= threshold; soft = sigmoid(a * u + b) (soft may alias u);
 * out = {sum m (1 - m), count of hard}. */
void sp_fill_masks(const float *u, int64_t n, float a, float b, float threshold, float *soft,
                   uint8_t *hard, int nt, double *out) {
    nt = threads_for(n, nt);
    double sums[MAX_THREADS];
    int64_t counts[MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        double total = 0.0;
        int64_t kept = 0;
        for (int64_t k = lo; k < hi; k += SUM_BLOCK) {
            int64_t e = k + SUM_BLOCK < hi ? k + SUM_BLOCK : hi;
            float part = 0.0f;
            int32_t count = 0;
#pragma omp simd reduction(+ : part, count)
            for (int64_t i = k; i < e; i++) {
                float v = u[i];
                float m = sigmoid(MADD(a, v, b));
                uint8_t h = v >= threshold;
                hard[i] = h;
                soft[i] = m;
                part += m - m * m;
                count += h;
            }
            total += part;
            kept += count;
        }
        sums[t] = total;
        counts[t] = kept;
    }
    out[0] = sum_parts(sums, nt);
    out[1] = (double)count_parts(counts, nt);
}

/* hard = u >= threshold; returns the count kept in kept[0]. */
void sp_ge(const float *u, int64_t n, float threshold, uint8_t *hard, int nt, int64_t *kept) {
    nt = threads_for(n, nt);
    int64_t counts[MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        int64_t total = 0;
        for (int64_t k = lo; k < hi; k += SUM_BLOCK) {
            int64_t e = k + SUM_BLOCK < hi ? k + SUM_BLOCK : hi;
            int32_t count = 0;
#pragma omp simd reduction(+ : count)
            for (int64_t i = k; i < e; i++) {
                uint8_t h = u[i] >= threshold;
                hard[i] = h;
                count += h;
            }
            total += count;
        }
        counts[t] = total;
    }
    kept[0] = count_parts(counts, nt);
}

/* out = (w * m) * h */
void sp_masked_forward(const float *w, const float *m, const uint8_t *h, float *out, int64_t n,
                       int nt) {
    nt = threads_for(n, nt);
#pragma omp parallel for simd num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = h[i] ? w[i] * m[i] : 0.0f;
}

/* Spartan's local weight gradient for 1x1 blocks: grad = G * (m + coef * s * |w|) with
 * s = m (1 - m); dot[0] = sum (G * w) * s, the layer's share of dL/dlam. */
void sp_soft_backward(const float *G, const float *w, const float *m, float coef, float *grad,
                      int64_t n, int nt, double *dot) {
    nt = threads_for(n, nt);
    double sums[MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        double total = 0.0;
        for (int64_t k = lo; k < hi; k += SUM_BLOCK) {
            int64_t e = k + SUM_BLOCK < hi ? k + SUM_BLOCK : hi;
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (int64_t i = k; i < e; i++) {
                float mi = m[i], wi = w[i], gi = G[i];
                float s = mi - mi * mi;
                part += gi * wi * s;
                grad[i] = gi * (mi + coef * s * fabsf(wi));
            }
            total += part;
        }
        sums[t] = total;
    }
    dot[0] = sum_parts(sums, nt);
}

/* grad (+)= coef * m (1 - m) * sign(w); overwrite when accumulate == 0. */
void sp_dual_add(float *grad, const float *w, const float *m, float coef, int accumulate,
                 int64_t n, int nt) {
    nt = threads_for(n, nt);
    if (accumulate) {
#pragma omp parallel for simd num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++) grad[i] += coef * copysignf(m[i] - m[i] * m[i], w[i]);
    } else {
#pragma omp parallel for simd num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++) grad[i] = coef * copysignf(m[i] - m[i] * m[i], w[i]);
    }
}

/* sums = {sum g s, sum c s} with s = m (1 - m), c = cost[i] or 1. */
void sp_topk_backward_sums(const float *g, const float *m, const float *cost, int64_t n, int nt,
                           double *sums) {
    nt = threads_for(n, nt);
    double s1[MAX_THREADS], s2[MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        double t1 = 0.0, t2 = 0.0;
        for (int64_t k = lo; k < hi; k += SUM_BLOCK) {
            int64_t e = k + SUM_BLOCK < hi ? k + SUM_BLOCK : hi;
            float p1 = 0.0f, p2 = 0.0f;
            if (cost) {
#pragma omp simd reduction(+ : p1, p2)
                for (int64_t i = k; i < e; i++) {
                    float s = m[i] - m[i] * m[i];
                    p1 += g[i] * s;
                    p2 += cost[i] * s;
                }
            } else {
#pragma omp simd reduction(+ : p1, p2)
                for (int64_t i = k; i < e; i++) {
                    float s = m[i] - m[i] * m[i];
                    p1 += g[i] * s;
                    p2 += s;
                }
            }
            t1 += p1;
            t2 += p2;
        }
        s1[t] = t1;
        s2[t] = t2;
    }
    sums[0] = sum_parts(s1, nt);
    sums[1] = sum_parts(s2, nt);
}

/* out = scale * s * (g / c - ratio), s = m (1 - m), c = cost[i] or 1. */
void sp_topk_backward_apply(const float *g, const float *m, const float *cost, float ratio,
                            float scale, float *out, int64_t n, int nt) {
    nt = threads_for(n, nt);
    if (cost) {
#pragma omp parallel for simd num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++)
            out[i] = scale * (m[i] - m[i] * m[i]) * (g[i] / cost[i] - ratio);
    } else {
#pragma omp parallel for simd num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++) out[i] = scale * (m[i] - m[i] * m[i]) * (g[i] - ratio);
    }
}

/* u = boost where u >= threshold (in place): the layer floor's certain winners; the number
 * raised in raised[0]. */
void sp_raise(float *u, int64_t n, float threshold, float boost, int nt, int64_t *raised) {
    nt = threads_for(n, nt);
    int64_t counts[MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t lo, hi;
        range_of(n, nt, t, &lo, &hi);
        int64_t total = 0;
        for (int64_t k = lo; k < hi; k += SUM_BLOCK) {
            int64_t e = k + SUM_BLOCK < hi ? k + SUM_BLOCK : hi;
            int32_t count = 0;
#pragma omp simd reduction(+ : count)
            for (int64_t i = k; i < e; i++) {
                int32_t up = u[i] >= threshold;
                u[i] = up ? boost : u[i];
                count += up;
            }
            total += count;
        }
        counts[t] = total;
    }
    raised[0] = count_parts(counts, nt);
}
