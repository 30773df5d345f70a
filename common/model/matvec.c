/* matvec.c - see matvec.h */
#include "model/matvec.h"
#include "base/util.h"

#include <string.h>

int qm_mat_dtype_ok(st_dtype dtype)
{
    return dtype == ST_BF16 || dtype == ST_F16 || dtype == ST_F32;
}

uint64_t qm_mat_bytes(st_dtype dtype, int rows, int cols)
{
    return (uint64_t)rows * (uint64_t)(cols > 0 ? cols : 1) * (st_dtype_bits(dtype) / 8);
}

int qm_mat_view(qm_mat *m, const st_tensor *t, const uint8_t *data, int rows,
                int cols, const char *label, GError **err)
{
    char want[64], got[64];
    int ok = cols > 0 ? t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols
                      : t->ndim == 1 && t->shape[0] == rows;
    if (!qm_mat_dtype_ok(t->dtype)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "%s: tensor '%s' has dtype %s (the forward pass needs BF16, F16 "
                    "or F32)", label, t->name, st_dtype_name(t->dtype));
        return -1;
    }
    if (!ok) {
        int64_t w[2] = {rows, cols};
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "%s: tensor '%s' has shape %s, the config implies %s", label,
                    t->name, st_shape_str(t->shape, t->ndim, got, sizeof got),
                    st_shape_str(w, cols > 0 ? 2 : 1, want, sizeof want));
        return -1;
    }
    m->data = data;
    m->dtype = t->dtype;
    m->rows = rows;
    m->cols = cols > 0 ? cols : 1;
    return 0;
}

/* ---- element conversion ---- */

/* bf16 is the top half of a float32. Loads go through memcpy because
 * tensor data need not be aligned. */
static inline float bf16_at(const uint8_t *p, size_t i)
{
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 65536 entries: f16 weights are rare, a table keeps their loop simple. */
static float *f16_table(void)
{
    static float *table;
    static gsize once;
    if (g_once_init_enter(&once)) {
        float *t = g_new(float, 65536);
        for (uint32_t i = 0; i < 65536; i++)
            t[i] = f16_to_f32((uint16_t)i);
        table = t;
        g_once_init_leave(&once, 1);
    }
    return table;
}

static inline float f16_at(const float *tab, const uint8_t *p, size_t i)
{
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return tab[h];
}

static inline float f32_at(const uint8_t *p, size_t i)
{
    float f;
    memcpy(&f, p + 4 * i, 4);
    return f;
}

void qm_mat_row(const qm_mat *m, int r, float *out)
{
    size_t n = (size_t)m->cols, base = (size_t)r * n;
    if (m->dtype == ST_BF16) {
        for (size_t c = 0; c < n; c++)
            out[c] = bf16_at(m->data, base + c);
    } else if (m->dtype == ST_F16) {
        const float *tab = f16_table();
        for (size_t c = 0; c < n; c++)
            out[c] = f16_at(tab, m->data, base + c);
    } else {
        memcpy(out, m->data + 4 * base, 4 * n);
    }
}

/* ---- dot products ----
 * Sixteen independent partial sums let the compiler keep them in vector
 * registers (it may not reorder a single float sum by itself). */
#define LANES 16

static float dot_bf16(const uint8_t *w, const float *x, int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += bf16_at(w, (size_t)(i + j)) * x[i + j];
    float s = 0;
    for (int j = 0; j < LANES; j++)
        s += acc[j];
    for (; i < n; i++)
        s += bf16_at(w, (size_t)i) * x[i];
    return s;
}

static float dot_f16(const float *tab, const uint8_t *w, const float *x, int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += f16_at(tab, w, (size_t)(i + j)) * x[i + j];
    float s = 0;
    for (int j = 0; j < LANES; j++)
        s += acc[j];
    for (; i < n; i++)
        s += f16_at(tab, w, (size_t)i) * x[i];
    return s;
}

static float dot_f32(const uint8_t *w, const float *x, int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += f32_at(w, (size_t)(i + j)) * x[i + j];
    float s = 0;
    for (int j = 0; j < LANES; j++)
        s += acc[j];
    for (; i < n; i++)
        s += f32_at(w, (size_t)i) * x[i];
    return s;
}

void qm_matvec_rows(float *out, const qm_mat *m, const float *x, int r0, int r1)
{
    size_t row_bytes = (size_t)m->cols * (st_dtype_bits(m->dtype) / 8);
    const uint8_t *w = m->data + (size_t)r0 * row_bytes;
    if (m->dtype == ST_BF16) {
        for (int r = r0; r < r1; r++, w += row_bytes)
            out[r] = dot_bf16(w, x, m->cols);
    } else if (m->dtype == ST_F16) {
        const float *tab = f16_table();
        for (int r = r0; r < r1; r++, w += row_bytes)
            out[r] = dot_f16(tab, w, x, m->cols);
    } else {
        for (int r = r0; r < r1; r++, w += row_bytes)
            out[r] = dot_f32(w, x, m->cols);
    }
}

typedef struct {
    int n;
    float *const *out;
    const qm_mat *const *mats;
    const float *const *xs;
    int total; /* rows of all matrices */
} batch_job;

/* Thread i takes rows [i*total/n, (i+1)*total/n) of the matrices laid end
 * to end. */
static void batch_part(void *arg, int i, int n)
{
    const batch_job *j = arg;
    int lo = (int)((int64_t)j->total * i / n), hi = (int)((int64_t)j->total * (i + 1) / n);
    int base = 0;
    for (int k = 0; k < j->n && lo < hi; k++) {
        int rows = j->mats[k]->rows;
        int a = lo - base, b = hi - base;
        if (a < rows && b > 0) {
            a = a < 0 ? 0 : a;
            b = b > rows ? rows : b;
            qm_matvec_rows(j->out[k], j->mats[k], j->xs[k], a, b);
        }
        base += rows;
    }
}

void qm_matvec_batch(team *t, int n, float *const *out, const qm_mat *const *mats,
                     const float *const *xs)
{
    if (n <= 0)
        return;
    batch_job j = {.n = n, .out = out, .mats = mats, .xs = xs};
    for (int k = 0; k < n; k++)
        j.total += mats[k]->rows;
    if (!t || team_size(t) == 1 || j.total < 64)
        batch_part(&j, 0, 1);
    else
        team_run(t, batch_part, &j);
}

void qm_matvec_multi(team *t, int n, float *const *out, const qm_mat *const *mats,
                     const float *x)
{
    const float *xs[4] = {x, x, x, x};
    qm_matvec_batch(t, n < 4 ? n : 4, out, mats, xs);
}

void qm_matvec(team *t, float *out, const qm_mat *m, const float *x)
{
    float *o[1] = {out};
    const qm_mat *ms[1] = {m};
    qm_matvec_multi(t, 1, o, ms, x);
}

/* ---- matrix-matrix products (prefill) ----
 *
 * A tile of MM_R weight rows x MM_T tokens: each bf16 weight is widened
 * once and used MM_T times, each input float used MM_R times, from
 * registers. Written with GCC/Clang generic vectors (plain C semantics,
 * no intrinsics): a 16-float vector is one AVX-512 register, two AVX2
 * ones, four SSE ones: whatever the target has. The 16 lanes of a (row,
 * token) accumulator are dot_bf16's 16 partial sums, added in the same
 * order and reduced the same way, so every output is bit-identical to
 * qm_matvec_rows of that token: batched prefill and token-by-token
 * decode agree exactly (logits, router choices).
 *
 * Measured (qmoe-mkbench-style product, 2048x2048 bf16, 64 tokens, one
 * thread, shared 2-core Sapphire Rapids): see matmat_bench in
 * tests/bench/run_prefill.sh. */
typedef float v16f __attribute__((vector_size(64)));
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef uint32_t v16u32 __attribute__((vector_size(64)));

static inline v16f bf16x16(const uint8_t *p)
{
    v16u16 h;
    memcpy(&h, p, sizeof h);
    v16u32 u = __builtin_convertvector(h, v16u32) << 16;
    v16f f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline v16f f32x16(const float *p)
{
    v16f f;
    memcpy(&f, p, sizeof f);
    return f;
}

#ifndef MM_R
#define MM_R 4
#endif
#ifndef MM_T
#define MM_T 6
#endif
/* Unrolled tile loops let the compiler keep acc[][] in registers (it
 * scalarises an array only once every index is a constant). */
#define MM_UNROLL _Pragma("GCC unroll 8")
#define MM_CASE(R, T)                                                                 \
    case T:                                                                           \
        mm_tile_bf16(w, rb, R, xt, ldx, T, m->cols, ot + r, ldo);                     \
        break;

/* nr <= MM_R rows at w (row_bytes apart) x nt <= MM_T tokens at x (ldx
 * floats apart) into out[t * ldo + r]. Inlined with constant nr, nt so
 * the accumulators live in registers. Lane j of acc[r][t] is dot_bf16's
 * partial sum j. */
static inline __attribute__((always_inline)) void
mm_tile_bf16(const uint8_t *w, size_t row_bytes, int nr, const float *x, size_t ldx, int nt,
             int cols, float *out, size_t ldo)
{
    v16f acc[MM_R][MM_T];
    MM_UNROLL
    for (int r = 0; r < nr; r++) {
        MM_UNROLL
        for (int t = 0; t < nt; t++)
            acc[r][t] = (v16f){0};
    }
    int i = 0;
    for (; i + 16 <= cols; i += 16) {
        v16f wv[MM_R];
        MM_UNROLL
        for (int r = 0; r < nr; r++)
            wv[r] = bf16x16(w + r * row_bytes + 2 * (size_t)i);
        MM_UNROLL
        for (int t = 0; t < nt; t++) {
            v16f xv = f32x16(x + t * ldx + i);
            MM_UNROLL
            for (int r = 0; r < nr; r++)
                acc[r][t] += wv[r] * xv;
        }
    }
    MM_UNROLL
    for (int r = 0; r < nr; r++) {
        MM_UNROLL
        for (int t = 0; t < nt; t++) {
            float s = 0;
            for (int j = 0; j < 16; j++)
                s += acc[r][t][j];
            for (int c = i; c < cols; c++)
                s += bf16_at(w + r * row_bytes, (size_t)c) * x[t * ldx + c];
            out[t * ldo + r] = s;
        }
    }
}

/* Rows per block: a block of weights (at most ~128 KB) stays in L2 while
 * every token tile of the batch passes over it. */
static int mm_block_rows(size_t row_bytes)
{
    size_t n = (128u << 10) / (row_bytes ? row_bytes : 1);
    n -= n % MM_R;
    return n < MM_R ? MM_R : n > 256 ? 256 : (int)n;
}

static void mm_rows_bf16(float *out, int ldo, const qm_mat *m, const float *x, int ldx,
                         int n_tok, int r0, int r1)
{
    size_t rb = (size_t)m->cols * 2;
    int block = mm_block_rows(rb);
    for (int b0 = r0; b0 < r1; b0 += block) {
        int b1 = b0 + block < r1 ? b0 + block : r1;
        for (int t = 0; t < n_tok; t += MM_T) {
            int nt = n_tok - t < MM_T ? n_tok - t : MM_T;
            const float *xt = x + (size_t)t * ldx;
            float *ot = out + (size_t)t * ldo;
            for (int r = b0; r < b1; r += MM_R) {
                const uint8_t *w = m->data + (size_t)r * rb;
                int nr = b1 - r < MM_R ? b1 - r : MM_R;
                /* constant shapes for the inliner: full tiles, then the edges */
                if (nr == MM_R) {
                    switch (nt) {
                    MM_CASE(MM_R, 1)
                    MM_CASE(MM_R, 2)
                    MM_CASE(MM_R, 3)
                    MM_CASE(MM_R, 4)
#if MM_T > 4
                    MM_CASE(MM_R, 5)
                    MM_CASE(MM_R, 6)
#endif
                    }
                } else {
                    /* the last nr < MM_R rows, each on its own (all of them:
                     * rows % 4 of 2 or 3 left rows unwritten) */
                    for (int e = 0; e < nr; e++)
                        for (int k = 0; k < nt; k++)
                            mm_tile_bf16(w + (size_t)e * rb, rb, 1, xt + (size_t)k * ldx, ldx,
                                         1, m->cols, ot + (size_t)k * ldo + r + e, ldo);
                }
            }
        }
    }
}

void qm_matmat_rows(float *out, int ldo, const qm_mat *m, const float *x, int ldx,
                    int n_tok, int r0, int r1)
{
    if (m->dtype == ST_BF16) {
        mm_rows_bf16(out, ldo, m, x, ldx, n_tok, r0, r1);
        return;
    }
    /* f16 and f32 weights are rare: one product per token, the same sums */
    float *o = out;
    for (int t = 0; t < n_tok; t++, o += ldo) {
        const float *xt = x + (size_t)t * ldx;
        size_t row_bytes = (size_t)m->cols * (st_dtype_bits(m->dtype) / 8);
        const uint8_t *w = m->data + (size_t)r0 * row_bytes;
        if (m->dtype == ST_F16) {
            const float *tab = f16_table();
            for (int r = r0; r < r1; r++, w += row_bytes)
                o[r] = dot_f16(tab, w, xt, m->cols);
        } else {
            for (int r = r0; r < r1; r++, w += row_bytes)
                o[r] = dot_f32(w, xt, m->cols);
        }
    }
}

typedef struct {
    int n, n_tok, ldx;
    float *const *out;
    const int *ldo;
    const qm_mat *const *mats;
    const float *x;
    int total; /* rows of all matrices */
} mm_job;

/* As batch_part, with the cuts on multiples of MM_R rows. */
static void mm_part(void *arg, int i, int n)
{
    const mm_job *j = arg;
    int units = (j->total + MM_R - 1) / MM_R;
    int lo = (int)((int64_t)units * i / n) * MM_R, hi = (int)((int64_t)units * (i + 1) / n) * MM_R;
    hi = hi > j->total ? j->total : hi;
    int base = 0;
    for (int k = 0; k < j->n && lo < hi; k++) {
        int rows = j->mats[k]->rows;
        int a = lo - base, b = hi - base;
        if (a < rows && b > 0) {
            a = a < 0 ? 0 : a;
            b = b > rows ? rows : b;
            qm_matmat_rows(j->out[k], j->ldo[k], j->mats[k], j->x, j->ldx, j->n_tok, a, b);
        }
        base += rows;
    }
}

void qm_matmat_multi(team *t, int n, float *const *out, const int *ldo,
                     const qm_mat *const *mats, const float *x, int ldx, int n_tok)
{
    if (n <= 0 || n_tok <= 0)
        return;
    mm_job j = {.n = n, .n_tok = n_tok, .ldx = ldx, .out = out, .ldo = ldo, .mats = mats,
                .x = x};
    for (int k = 0; k < n; k++)
        j.total += mats[k]->rows;
    if (!t || team_size(t) == 1 || (int64_t)j.total * n_tok < 64)
        mm_part(&j, 0, 1);
    else
        team_run(t, mm_part, &j);
}

void qm_matmat(team *t, float *out, int ldo, const qm_mat *m, const float *x, int ldx,
               int n_tok)
{
    float *o[1] = {out};
    const qm_mat *ms[1] = {m};
    int l[1] = {ldo};
    qm_matmat_multi(t, 1, o, l, ms, x, ldx, n_tok);
}
