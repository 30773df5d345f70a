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
