/* Sparse x dense inference kernels for deployed Linear / Conv2d layers (float32, CPU).
 *
 * Two kernels, each a register-tiled loop over the kept entries only:
 *
 * sp_bsr_rows: y (T, out) = x (T, in) @ W^T (+ bias) with W in r x c blocks, r a multiple of 8
 *   (8, 16, 24 or 32). Row layout: no transposes. Every kept block is a small dense GEMM over
 *   the tokens: a tile of TT tokens x r outputs stays in registers while the block row's kept
 *   blocks stream past (the 6 x 16 tile of a classic GEMM micro-kernel for r = 16).
 *   Blocks are packed as W^T per block, (c, r), so the r outputs of one input are contiguous.
 *
 * sp_group_cols: yT (out, L) = W (out, K) @ xT (K, L) (+ bias) for B samples, with W stored as
 *   groups of G consecutive rows sharing one column list (G = 1: CSR, unstructured; G = r: the
 *   block rows of r x c blocks, columns expanded). Column layout: vectorised over L, which is
 *   what im2col (conv, NCHW) gives, so convolutions need no transposes. A tile of RC rows x
 *   8 * V positions stays in registers while the group's columns stream past.
 *   sp_group_tokens is its Linear form in row layout: the transposes to and from the column
 *   layout are done in the kernel, each thread on the tokens it computes.
 *
 * All are parallel with OpenMP, each thread on contiguous tokens / positions where they are
 * wide enough (its part of the input and output stays in its core's cache), each output
 * written once by one thread in the same order whatever the split (results do not depend on
 * the thread count), and use the compiler's vector extensions, which map to AVX/FMA, AVX-512
 * or NEON under -march=native.
 */
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

/* the x (or xT) one thread works on at a time, cut to stay in its core's cache */
#define CHUNK_BYTES (1 << 20)

static inline v8 ld(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void st(float *p, v8 v) { memcpy(p, &v, sizeof v); }

static inline v8 splat(float s) { return (v8){s, s, s, s, s, s, s, s}; }

/* ---------------------------------------------------------------- sp_bsr_rows */

#define BSR_TILE(TT, V)                                                                      \
    static inline __attribute__((always_inline)) void bsr_tile_##TT##_##V(                   \
        const float *x, int64_t ldx, const float *vals, const int32_t *cols, int64_t b0,     \
        int64_t b1, int c, const float *bias, float *y, int64_t ldy) {                       \
        v8 acc[TT][V];                                                                       \
        for (int v = 0; v < V; v++) {                                                        \
            v8 init = bias ? ld(bias + 8 * v) : splat(0.0f);                                 \
            for (int t = 0; t < TT; t++) acc[t][v] = init;                                   \
        }                                                                                    \
        for (int64_t b = b0; b < b1; b++) {                                                  \
            const float *xb = x + (int64_t)cols[b] * c;                                      \
            const float *wb = vals + b * (int64_t)c * (8 * V);                               \
            if (b + 1 < b1) {                                                                \
                const float *xn = x + (int64_t)cols[b + 1] * c;                              \
                for (int t = 0; t < TT; t++) __builtin_prefetch(xn + t * ldx);               \
            }                                                                                \
            for (int k = 0; k < c; k++) {                                                    \
                v8 w[V];                                                                     \
                for (int v = 0; v < V; v++) w[v] = ld(wb + k * 8 * V + 8 * v);               \
                for (int t = 0; t < TT; t++) {                                               \
                    v8 s = splat(xb[t * ldx + k]);                                           \
                    for (int v = 0; v < V; v++) acc[t][v] += s * w[v];                       \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        for (int t = 0; t < TT; t++)                                                         \
            for (int v = 0; v < V; v++) st(y + t * ldy + 8 * v, acc[t][v]);                  \
    }                                                                                        \
    static void bsr_row_##V(const float *x, int64_t ntok, int64_t ldx, const float *vals,    \
                            const int32_t *cols, int64_t b0, int64_t b1, int c,              \
                            const float *bias, float *y, int64_t ldy) {                      \
        int64_t t = 0;                                                                       \
        for (; t + TT <= ntok; t += TT)                                                      \
            bsr_tile_##TT##_##V(x + t * ldx, ldx, vals, cols, b0, b1, c, bias, y + t * ldy,  \
                                ldy);                                                        \
        for (; t < ntok; t++)                                                                \
            bsr_tile_1_##V(x + t * ldx, ldx, vals, cols, b0, b1, c, bias, y + t * ldy, ldy); \
    }

#define BSR_TAIL(V)                                                                          \
    static inline __attribute__((always_inline)) void bsr_tile_1_##V(                        \
        const float *x, int64_t ldx, const float *vals, const int32_t *cols, int64_t b0,     \
        int64_t b1, int c, const float *bias, float *y, int64_t ldy) {                       \
        (void)ldx;                                                                           \
        (void)ldy;                                                                           \
        v8 acc[V];                                                                           \
        for (int v = 0; v < V; v++) acc[v] = bias ? ld(bias + 8 * v) : splat(0.0f);          \
        for (int64_t b = b0; b < b1; b++) {                                                  \
            const float *xb = x + (int64_t)cols[b] * c;                                      \
            const float *wb = vals + b * (int64_t)c * (8 * V);                               \
            for (int k = 0; k < c; k++) {                                                    \
                v8 s = splat(xb[k]);                                                         \
                for (int v = 0; v < V; v++) acc[v] += s * ld(wb + k * 8 * V + 8 * v);       \
            }                                                                                \
        }                                                                                    \
        for (int v = 0; v < V; v++) st(y + 8 * v, acc[v]);                                   \
    }

BSR_TAIL(1)
BSR_TAIL(2)
BSR_TAIL(3)
BSR_TAIL(4)
BSR_TILE(12, 1)
BSR_TILE(6, 2)
BSR_TILE(4, 3)
BSR_TILE(3, 4)

#ifdef __AVX512F__
/* The same tiles with 16-float vectors where AVX-512 is there (r = 16 or 32): twice the
 * multiply-adds per instruction, and 32 registers hold a 12 x 32 tile. */
typedef float v16 __attribute__((vector_size(64)));

static inline v16 ld16(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

#define BSR16_TILE(TT, V)                                                                    \
    static inline __attribute__((always_inline)) void bsr16_tile_##TT##_##V(                 \
        const float *x, int64_t ldx, const float *vals, const int32_t *cols, int64_t b0,     \
        int64_t b1, int c, const float *bias, float *y, int64_t ldy) {                       \
        v16 acc[TT][V];                                                                      \
        for (int v = 0; v < V; v++) {                                                        \
            v16 init = bias ? ld16(bias + 16 * v) : (v16){0};                                \
            for (int t = 0; t < TT; t++) acc[t][v] = init;                                   \
        }                                                                                    \
        for (int64_t b = b0; b < b1; b++) {                                                  \
            const float *xb = x + (int64_t)cols[b] * c;                                      \
            const float *wb = vals + b * (int64_t)c * (16 * V);                              \
            if (b + 1 < b1) {                                                                \
                const float *xn = x + (int64_t)cols[b + 1] * c;                              \
                for (int t = 0; t < TT; t++) __builtin_prefetch(xn + t * ldx);               \
            }                                                                                \
            for (int k = 0; k < c; k++) {                                                    \
                v16 w[V];                                                                    \
                for (int v = 0; v < V; v++) w[v] = ld16(wb + k * 16 * V + 16 * v);           \
                for (int t = 0; t < TT; t++) {                                               \
                    float s = xb[t * ldx + k];                                               \
                    for (int v = 0; v < V; v++) acc[t][v] += s * w[v];                       \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        for (int t = 0; t < TT; t++)                                                         \
            for (int v = 0; v < V; v++) st16(y + t * ldy + 16 * v, acc[t][v]);               \
    }

BSR16_TILE(12, 1)
BSR16_TILE(4, 1)
BSR16_TILE(1, 1)
BSR16_TILE(12, 2)
BSR16_TILE(4, 2)
BSR16_TILE(1, 2)

/* every token of one block row of 16 V outputs: tiles of 12, then 4, then 1 token */
#define BSR16_ROW(V)                                                                         \
    static void bsr16_row_##V(const float *x, int64_t ntok, int64_t ldx, const float *vals, \
                              const int32_t *cols, int64_t b0, int64_t b1, int c,            \
                              const float *bias, float *y, int64_t ldy) {                    \
        int64_t t = 0;                                                                       \
        for (; t + 12 <= ntok; t += 12)                                                      \
            bsr16_tile_12_##V(x + t * ldx, ldx, vals, cols, b0, b1, c, bias, y + t * ldy,    \
                              ldy);                                                          \
        for (; t + 4 <= ntok; t += 4)                                                        \
            bsr16_tile_4_##V(x + t * ldx, ldx, vals, cols, b0, b1, c, bias, y + t * ldy,     \
                             ldy);                                                           \
        for (; t < ntok; t++)                                                                \
            bsr16_tile_1_##V(x + t * ldx, ldx, vals, cols, b0, b1, c, bias, y + t * ldy,     \
                             ldy);                                                           \
    }

BSR16_ROW(1)
BSR16_ROW(2)
#endif

/* x (B, T, in) rows of ldx floats; y (B, T, out). row_ptr (R + 1,) over block rows of r
 * outputs, cols (n_blocks,) block-column indices, vals (n_blocks, c, r), bias (out,) or NULL.
 * Returns 0, or -1 for an unsupported r. */
int sp_bsr_rows(const float *x, int64_t ntok, int64_t ldx, const float *vals,
                const int64_t *row_ptr, const int32_t *cols, int64_t nrows, int r, int c,
                const float *bias, float *y, int64_t ldy, int nt) {
    if (r % 8 || r < 8 || r > 32) return -1;
    /* Each thread takes a contiguous range of tokens for every block row (a static schedule
     * over chunk-major items): it reads only its rows of x and writes only its rows of y, so
     * both stay in that core's cache from the op before to the op after, which split the
     * tokens among threads the same way. A range whose x exceeds CHUNK_BYTES is cut into
     * chunks that stay in cache while the weights stream past. Chunk sizes are multiples of
     * 4 tokens (whole small tiles). */
    if (ntok < 1) return 0;
    if (nt < 1) nt = 1;
    int64_t per_thread = (ntok + nt - 1) / nt;
    int64_t sub = (per_thread * ldx * (int64_t)sizeof(float) + CHUNK_BYTES - 1) / CHUNK_BYTES;
    int64_t chunk = (ntok + nt * sub - 1) / (nt * sub);
    chunk = (chunk + 3) / 4 * 4;
    int64_t nchunks = (ntok + chunk - 1) / chunk;
    int64_t work = nrows * nchunks;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < work; i++) {
        int64_t row = i % nrows, t0 = (i / nrows) * chunk;
        int64_t n = ntok - t0 < chunk ? ntok - t0 : chunk;
        const float *xr = x + t0 * ldx;
        float *yr = y + t0 * ldy + row * r;
        const float *br = bias ? bias + row * r : 0;
        int64_t b0 = row_ptr[row], b1 = row_ptr[row + 1];
#ifdef __AVX512F__
        if (r == 16) {
            bsr16_row_1(xr, n, ldx, vals, cols, b0, b1, c, br, yr, ldy);
            continue;
        }
        if (r == 32) {
            bsr16_row_2(xr, n, ldx, vals, cols, b0, b1, c, br, yr, ldy);
            continue;
        }
#endif
        switch (r / 8) {
            case 1: bsr_row_1(xr, n, ldx, vals, cols, b0, b1, c, br, yr, ldy); break;
            case 2: bsr_row_2(xr, n, ldx, vals, cols, b0, b1, c, br, yr, ldy); break;
            case 3: bsr_row_3(xr, n, ldx, vals, cols, b0, b1, c, br, yr, ldy); break;
            default: bsr_row_4(xr, n, ldx, vals, cols, b0, b1, c, br, yr, ldy); break;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- sp_group_cols */

/* columns ahead whose rows are prefetched: the column lists jump around xT */
#define PREFETCH 8

/* RC rows x 8V positions; w points at the group's values for the first of the RC rows,
 * laid out (n_cols, G). */
#define COL_TILE(RC, V)                                                                      \
    static inline __attribute__((always_inline)) void col_tile_##RC##_##V(                   \
        const float *xT, int64_t ldx, const float *w, int G, const int32_t *cols, int64_t n, \
        const float *bias, float *yT, int64_t ldy) {                                         \
        v8 acc[RC][V];                                                                       \
        for (int q = 0; q < RC; q++) {                                                       \
            v8 init = splat(bias ? bias[q] : 0.0f);                                          \
            for (int v = 0; v < V; v++) acc[q][v] = init;                                    \
        }                                                                                    \
        for (int64_t j = 0; j < n; j++) {                                                    \
            const float *xr = xT + (int64_t)cols[j] * ldx;                                   \
            if (V > 1 && j + PREFETCH < n) {                                                 \
                const float *next = xT + (int64_t)cols[j + PREFETCH] * ldx;                  \
                for (int q = 0; q < 8 * V; q += 16) __builtin_prefetch(next + q);            \
            }                                                                                \
            v8 xv[V];                                                                        \
            for (int v = 0; v < V; v++) xv[v] = ld(xr + 8 * v);                              \
            for (int q = 0; q < RC; q++) {                                                   \
                v8 s = splat(w[j * G + q]);                                                  \
                for (int v = 0; v < V; v++) acc[q][v] += s * xv[v];                          \
            }                                                                                \
        }                                                                                    \
        for (int q = 0; q < RC; q++)                                                         \
            for (int v = 0; v < V; v++) st(yT + q * ldy + 8 * v, acc[q][v]);                 \
    }

COL_TILE(1, 6)
COL_TILE(1, 1)
COL_TILE(2, 4)
COL_TILE(2, 1)
COL_TILE(4, 3)
COL_TILE(4, 1)

/* positions [p0, p1) of rc rows, scalar */
static void col_scalar(const float *xT, int64_t ldx, const float *w, int G, int rc,
                       const int32_t *cols, int64_t n, const float *bias, float *yT,
                       int64_t ldy, int64_t p0, int64_t p1) {
    for (int q = 0; q < rc; q++)
        for (int64_t p = p0; p < p1; p++) {
            float acc = bias ? bias[q] : 0.0f;
            for (int64_t j = 0; j < n; j++) acc += w[j * G + q] * xT[(int64_t)cols[j] * ldx + p];
            yT[q * ldy + p] = acc;
        }
}

/* Positions [p0, p1) of RC rows: tiles of 8V, then of 8, then one tile of 8 ending at p1
 * that overlaps the last one (the overlapped positions are recomputed to the same values);
 * scalar only when the span is narrower than 8. */
#define COL_SPAN(RC, V)                                                                      \
    static void col_span_##RC(const float *xT, int64_t ldx, const float *w, int G,           \
                              const int32_t *cols, int64_t n, const float *bias, float *yT,  \
                              int64_t ldy, int64_t p0, int64_t p1) {                         \
        int64_t p = p0;                                                                      \
        for (; p + 8 * V <= p1; p += 8 * V)                                                  \
            col_tile_##RC##_##V(xT + p, ldx, w, G, cols, n, bias, yT + p, ldy);              \
        for (; p + 8 <= p1; p += 8)                                                          \
            col_tile_##RC##_1(xT + p, ldx, w, G, cols, n, bias, yT + p, ldy);                \
        if (p < p1 && p1 - p0 >= 8)                                                          \
            col_tile_##RC##_1(xT + p1 - 8, ldx, w, G, cols, n, bias, yT + p1 - 8, ldy);      \
        else if (p < p1)                                                                     \
            col_scalar(xT, ldx, w, G, RC, cols, n, bias, yT, ldy, p, p1);                    \
    }

COL_SPAN(1, 6)
COL_SPAN(2, 4)
COL_SPAN(4, 3)

/* Positions [p0, p1) of group g: yT rows g * G ... g * G + G - 1 (yT points at the sample). */
static void group_span(const float *xT, int64_t ldx, const float *vals, const int64_t *col_ptr,
                       const int32_t *cols, int64_t g, int G, const float *bias, float *yT,
                       int64_t ldy, int64_t p0, int64_t p1) {
    int64_t c0 = col_ptr[g], n = col_ptr[g + 1] - c0;
    const int32_t *gc = cols + c0;
    const float *gw = vals + c0 * G;
    int q = 0;
    for (; q + 4 <= G; q += 4)
        col_span_4(xT, ldx, gw + q, G, gc, n, bias ? bias + g * G + q : 0,
                   yT + (g * G + q) * ldy, ldy, p0, p1);
    for (; q + 2 <= G; q += 2)
        col_span_2(xT, ldx, gw + q, G, gc, n, bias ? bias + g * G + q : 0,
                   yT + (g * G + q) * ldy, ldy, p0, p1);
    for (; q < G; q++)
        col_span_1(xT, ldx, gw + q, G, gc, n, bias ? bias + g * G + q : 0,
                   yT + (g * G + q) * ldy, ldy, p0, p1);
}

/* How the positions of one call are shared out. Where each thread's part of xT passes
 * CHUNK_BYTES it is cut into chunks that stay in that core's cache; when the chunks are at
 * least MIN_AFFINE positions wide (a 48-wide tile), each thread takes contiguous chunks for
 * every group (a static, chunk-major schedule: it reads only its columns of xT and writes
 * only its columns of yT). Otherwise groups are shared out dynamically, positions cut only
 * when there are too few groups to keep every thread busy. */
#define MIN_AFFINE 40

typedef struct {
    int64_t nchunks;
    int affine;
} plan_t;

static plan_t plan_positions(int64_t nb, int64_t K, int64_t L, int64_t ngroups, int nt) {
    int64_t split = nb < nt ? (nt + nb - 1) / nb : 1; /* thread ranges per sample */
    int64_t per = (L + split - 1) / split;
    int64_t sub = (K * per * (int64_t)sizeof(float) + CHUNK_BYTES - 1) / CHUNK_BYTES;
    plan_t plan = {split * sub, 1};
    if (plan.nchunks > 1 && L / plan.nchunks < MIN_AFFINE) {
        plan.affine = 0;
        plan.nchunks = 1;
        while (nb * ngroups * plan.nchunks < 8 * (int64_t)nt && L / (plan.nchunks * 2) >= 48)
            plan.nchunks *= 2;
    }
    return plan;
}

/* chunk ch of nchunks over [0, L): boundaries on multiples of 8, the last chunk ends at L */
static inline int64_t chunk_start(int64_t ch, int64_t nchunks, int64_t L) {
    return ch >= nchunks ? L : ch * L / nchunks / 8 * 8;
}

/* xT (B, K, L) with sample stride sx and row stride ldx; yT (B, out, L) with sample stride sy
 * and row stride ldy. Groups: group g covers rows [g * G, g * G + G) and columns
 * cols[col_ptr[g] : col_ptr[g + 1]], with values vals[col_ptr[g] * G ...] laid out (n_cols, G).
 * Positions are shared out as plan_positions says. */
void sp_group_cols(const float *xT, int64_t nb, int64_t sx, int64_t ldx, int64_t L,
                   const float *vals, const int64_t *col_ptr, const int32_t *cols,
                   int64_t ngroups, int G, const float *bias, float *yT, int64_t sy,
                   int64_t ldy, int nt) {
    if (L < 1 || nb < 1 || ngroups < 1) return;
    if (nt < 1) nt = 1;
    plan_t plan = plan_positions(nb, ldx ? sx / ldx : 1, L, ngroups, nt);
    int64_t nch = plan.nchunks, work = nb * nch * ngroups;
    if (plan.affine) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t i = 0; i < work; i++) {
            int64_t b = i / (ngroups * nch), ch = (i / ngroups) % nch, g = i % ngroups;
            group_span(xT + b * sx, ldx, vals, col_ptr, cols, g, G, bias, yT + b * sy, ldy,
                       chunk_start(ch, nch, L), chunk_start(ch + 1, nch, L));
        }
    } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
        for (int64_t i = 0; i < work; i++) {
            int64_t b = i / (ngroups * nch), g = (i / nch) % ngroups, ch = i % nch;
            group_span(xT + b * sx, ldx, vals, col_ptr, cols, g, G, bias, yT + b * sy, ldy,
                       chunk_start(ch, nch, L), chunk_start(ch + 1, nch, L));
        }
    }
}

/* dst[i * ldd + j] = src[j * lds + i] for i in [i0, i1), j in [j0, j1), in tiles that keep
 * both sides' lines in cache */
static void transpose(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t i0,
                      int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t ib = i0; ib < i1; ib += 64) {
        int64_t ie = ib + 64 < i1 ? ib + 64 : i1;
        for (int64_t jb = j0; jb < j1; jb += 8) {
            int64_t je = jb + 8 < j1 ? jb + 8 : j1;
            for (int64_t i = ib; i < ie; i++)
                for (int64_t j = jb; j < je; j++) dst[i * ldd + j] = src[j * lds + i];
        }
    }
}

/* The Linear form of sp_group_cols: y (T, out) = x (T, K) @ W^T (+ bias) in row layout, with
 * the transposes to and from the column layout done here, each thread on the tokens it
 * computes (xT (K, ldt) and yT (out, ldt) are scratch, ldt >= T). With affine chunks the
 * whole call is one pass per chunk (in, groups, out) that stays in the thread's cache. */
void sp_group_tokens(const float *x, int64_t T, int64_t ldx, int64_t K, const float *vals,
                     const int64_t *col_ptr, const int32_t *cols, int64_t ngroups, int G,
                     const float *bias, float *y, int64_t ldy, int64_t out, float *xT,
                     float *yT, int64_t ldt, int nt) {
    if (T < 1 || ngroups < 1) return;
    if (nt < 1) nt = 1;
    plan_t plan = plan_positions(1, K, T, ngroups, nt);
    int64_t nch = plan.nchunks;
    if (plan.affine) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t ch = 0; ch < nch; ch++) {
            int64_t p0 = chunk_start(ch, nch, T), p1 = chunk_start(ch + 1, nch, T);
            transpose(x, ldx, xT, ldt, 0, K, p0, p1);
            for (int64_t g = 0; g < ngroups; g++)
                group_span(xT, ldt, vals, col_ptr, cols, g, G, bias, yT, ldt, p0, p1);
            transpose(yT, ldt, y, ldy, p0, p1, 0, out);
        }
        return;
    }
    int64_t work = ngroups * nch;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#pragma omp for schedule(static)
        for (int64_t k = 0; k < K; k += 64)
            transpose(x, ldx, xT, ldt, k, k + 64 < K ? k + 64 : K, 0, T);
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < work; i++) {
            int64_t g = i / nch, ch = i % nch;
            group_span(xT, ldt, vals, col_ptr, cols, g, G, bias, yT, ldt,
                       chunk_start(ch, nch, T), chunk_start(ch + 1, nch, T));
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t += 8)
            transpose(yT, ldt, y, ldy, t, t + 8 < T ? t + 8 : T, 0, out);
    }
}

/* ---------------------------------------------------------------- sp_im2col */

/* cols (B, C * kh * kw, ldc) <- the patches of x (B, C, H, W) (contiguous), zero padding ph, pw,
 * stride sh, sw, dilation dh, dw; the first Ho * Wo entries of each row are written, rows in
 * (c, i, j) order as F.unfold gives them. */
void sp_im2col(const float *x, int64_t nb, int64_t C, int64_t H, int64_t W, int kh, int kw,
               int sh, int sw, int ph, int pw, int dh, int dw, int64_t Ho, int64_t Wo,
               float *cols, int64_t ldc, int nt) {
    int64_t rows = C * kh * kw, work = nb * rows;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && work * Ho * Wo > 32768)
    for (int64_t item = 0; item < work; item++) {
        int64_t b = item / rows, k = item % rows;
        int64_t c = k / (kh * kw);
        int i = (int)(k / kw % kh), j = (int)(k % kw);
        const float *xc = x + (b * C + c) * H * W;
        float *out = cols + item * ldc;
        for (int64_t oh = 0; oh < Ho; oh++) {
            int64_t ih = oh * sh - ph + i * dh;
            float *o = out + oh * Wo;
            if (ih < 0 || ih >= H) {
                memset(o, 0, sizeof(float) * Wo);
                continue;
            }
            const float *xr = xc + ih * W;
            int64_t shift = j * dw - pw;
            if (sw == 1) {
                /* iw = ow + shift: zeros, one contiguous run, zeros */
                int64_t lo = shift < 0 ? -shift : 0;
                int64_t hi = W - shift < Wo ? W - shift : Wo;
                if (lo > Wo) lo = Wo;
                if (hi < lo) hi = lo;
                memset(o, 0, sizeof(float) * lo);
                memcpy(o + lo, xr + lo + shift, sizeof(float) * (hi - lo));
                memset(o + hi, 0, sizeof(float) * (Wo - hi));
            } else {
                for (int64_t ow = 0; ow < Wo; ow++) {
                    int64_t iw = ow * sw + shift;
                    o[ow] = (iw >= 0 && iw < W) ? xr[iw] : 0.0f;
                }
            }
        }
    }
}
