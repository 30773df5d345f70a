/* matvec.c - see matvec.h */
#include "model/matvec.h"
#include "base/util.h"

#include <math.h>
#include <stdatomic.h>
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

int qm_mat_view_fp8(qm_mat *m, const qm_fp8_config *c, const st_tensor *w,
                    const uint8_t *codes, const st_tensor *s, const uint8_t *scale,
                    int rows, int cols, const char *file, GError **err)
{
    char want[64], got[64];
    if (qm_fp8_check_weight(c, file, w, s, err) != 0)
        return -1;
    if (w->shape[0] != rows || w->shape[1] != cols) {
        int64_t d[2] = {rows, cols};
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': tensor '%s' has shape %s, the config implies %s", file, w->name,
                    st_shape_str(w->shape, w->ndim, got, sizeof got),
                    st_shape_str(d, 2, want, sizeof want));
        return -1;
    }
    *m = (qm_mat){.data = codes, .dtype = ST_F8_E4M3, .rows = rows, .cols = cols,
                  .scale = scale, .scale_dtype = s->dtype, .block_rows = c->block_rows,
                  .block_cols = c->block_cols};
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

/* Scales of FP8 row r (its row of the scale grid) and scale j of it. */
static inline const uint8_t *scale_row(const qm_mat *m, int r)
{
    size_t gc = (size_t)((m->cols + m->block_cols - 1) / m->block_cols);
    return m->scale + (size_t)(r / m->block_rows) * gc * (m->scale_dtype == ST_BF16 ? 2 : 4);
}

static inline float scale_at(const qm_mat *m, const uint8_t *row, size_t j)
{
    return m->scale_dtype == ST_BF16 ? bf16_at(row, j) : f32_at(row, j);
}

void qm_mat_row(const qm_mat *m, int r, float *out)
{
    size_t n = (size_t)m->cols, base = (size_t)r * n;
    if (m->dtype == ST_F8_E4M3) {
        const float *tab = qm_e4m3_table();
        const uint8_t *sr = scale_row(m, r);
        for (size_t c = 0; c < n; c++)
            out[c] = tab[m->data[base + c]] * scale_at(m, sr, c / (size_t)m->block_cols);
    } else if (m->dtype == ST_BF16) {
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

/* ---- the kernel ----
 *
 * Every product, matrix-vector (decode) or matrix-matrix (prefill), goes
 * through one tile: nr weight rows x nt tokens. For each (row, token) the
 * tile keeps 16 partial sums: lane j adds w[c] * x[c] for c = j, j + 16,
 * ... with a fused multiply-add. The 16 lanes are then added in order,
 * then the cols % 16 last elements one by one. Every output is therefore
 * the same sum in the same order whatever the tile's shape: decode and
 * prefill agree bit for bit (logits, router choices), and so do the
 * AVX-512 and AVX2 builds. The portable build without FMA rounds each
 * product first: as close to the exact sum, not identical.
 *
 * Weights are widened in registers: bf16 is the top half of a float32 (a
 * zero extension and a shift), f16 goes through the conversion
 * instruction (F16C, AVX-512F) or a table.
 *
 * Decode reads each weight once per token: the product is memory-bound,
 * and MV_R rows at a time give the core that many independent streams and
 * dependency chains. A bf16 row of 2048 is one 4 KiB page, where the
 * hardware's stream prefetchers stop, so each group of rows starts cold:
 * the next group is prefetched by hand while this one computes (512 MB,
 * 2 threads: 31-36 GB/s before, 42-45 after, against 44-49 GB/s of plain
 * reading). Prefill uses each widened weight for MM_T tokens and
 * each input vector for MM_R rows from registers. */
enum { DT_BF16, DT_F16, DT_F32, DT_E4M3 };

#define MADD(s, w, x) ((s) + (w) * (x)) /* contracted to FMA where the build has one */

#if defined(__AVX512F__)
#include <immintrin.h>
#define KERNEL_ISA "avx512"
typedef __m512 vf; /* 16 floats: one register */
/* -DMM_R=.. -DMM_T=.. (also MV_R, MM_BLOCK_KB) build other shapes to
 * measure with tests/bench/kernels.c: 6x4, 5x5 and 4x6 with 64 KB blocks
 * ran within 3 % of 4x6 (~145 GFLOP/s), 8x3 and 3x8 10 % slower. */
#ifndef MM_R
#define MM_R 4 /* 24 accumulators + 4 weights + 1 input of 32 registers */
#define MM_T 6
#endif

static inline vf v_zero(void) { return _mm512_setzero_ps(); }

static inline vf v_f32(const void *p) { return _mm512_loadu_ps(p); }

static inline vf v_w(int dt, const uint8_t *p, const float *tab)
{
    (void)tab;
    if (dt == DT_BF16) {
        __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    }
    if (dt == DT_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_loadu_ps(p);
}

static inline vf v_fma(vf acc, vf w, vf x) { return _mm512_fmadd_ps(w, x, acc); }

static inline vf v_set1(float f) { return _mm512_set1_ps(f); }

static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }

/* Sixteen E4M3 codes as float16 bit patterns (e4m3_f16) widened. */
static inline __m256i e4m3_f16(__m128i q);
static inline vf v_e4m3q(__m128i q) { return _mm512_cvtph_ps(e4m3_f16(q)); }

static inline void v_store(float *o, vf a) { _mm512_storeu_ps(o, a); }

/* Keeps an input vector in a register: left alone, GCC folds its load
 * into each of the MM_R multiply-adds, and the loads then outnumber the
 * multiply-adds (measured 15 % slower). */
static inline void v_keep(vf *x) { __asm__("" : "+v"(*x)); }

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KERNEL_ISA "avx2"
#define KERNEL_AVX2 1
typedef struct {
    __m256 a, b; /* lanes 0-7, 8-15 */
} vf;
#define MM_R 2 /* 8 accumulator registers + 4 weights + 2 inputs of 16 */
#define MM_T 2

static inline vf v_zero(void) { return (vf){_mm256_setzero_ps(), _mm256_setzero_ps()}; }

static inline vf v_f32(const void *p)
{
    return (vf){_mm256_loadu_ps(p), _mm256_loadu_ps((const float *)p + 8)};
}

static inline __m256 bf16x8(const uint8_t *p)
{
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

static inline vf v_w(int dt, const uint8_t *p, const float *tab)
{
    (void)tab;
    if (dt == DT_BF16)
        return (vf){bf16x8(p), bf16x8(p + 16)};
    if (dt == DT_F16)
        return (vf){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)))};
    return v_f32(p);
}

static inline vf v_fma(vf acc, vf w, vf x)
{
    return (vf){_mm256_fmadd_ps(w.a, x.a, acc.a), _mm256_fmadd_ps(w.b, x.b, acc.b)};
}

static inline void v_store(float *o, vf a)
{
    _mm256_storeu_ps(o, a.a);
    _mm256_storeu_ps(o + 8, a.b);
}

static inline vf v_set1(float f) { return (vf){_mm256_set1_ps(f), _mm256_set1_ps(f)}; }

static inline vf v_mul(vf a, vf b)
{
    return (vf){_mm256_mul_ps(a.a, b.a), _mm256_mul_ps(a.b, b.b)};
}

static inline __m256i e4m3_f16(__m128i q);

static inline void v_keep(vf *x) { __asm__("" : "+x"(x->a), "+x"(x->b)); }

#else
#define KERNEL_ISA "portable"
typedef struct {
    float l[16];
} vf;
#define MM_R 2
#define MM_T 2

static inline vf v_zero(void) { return (vf){{0}}; }

static inline vf v_f32(const void *p)
{
    vf v;
    memcpy(v.l, p, sizeof v.l);
    return v;
}

static inline vf v_w(int dt, const uint8_t *p, const float *tab)
{
    vf v;
    for (int j = 0; j < 16; j++)
        v.l[j] = dt == DT_BF16 ? bf16_at(p, (size_t)j)
               : dt == DT_F16  ? f16_at(tab, p, (size_t)j)
                               : f32_at(p, (size_t)j);
    return v;
}

static inline vf v_fma(vf acc, vf w, vf x)
{
    for (int j = 0; j < 16; j++)
        acc.l[j] = MADD(acc.l[j], w.l[j], x.l[j]);
    return acc;
}

static inline void v_store(float *o, vf a) { memcpy(o, a.l, sizeof a.l); }

static inline void v_keep(vf *x) { (void)x; }

static inline vf v_set1(float f)
{
    vf v;
    for (int j = 0; j < 16; j++)
        v.l[j] = f;
    return v;
}

static inline vf v_mul(vf a, vf b)
{
    for (int j = 0; j < 16; j++)
        a.l[j] *= b.l[j];
    return a;
}

/* value / 256 as the SIMD builds give it (exact: a power of two); the
 * table has the NaNs, so nothing to look out for */
typedef int nan_seen;
static inline nan_seen nan_none(void) { return 0; }
static inline int nan_any(nan_seen s) { return s; }
static inline vf v_e4m3(const uint8_t *p, nan_seen *seen)
{
    (void)seen;
    const float *tab = qm_e4m3_table();
    vf v;
    for (int j = 0; j < 16; j++)
        v.l[j] = tab[p[j]] * (1.0f / 256);
    return v;
}
#endif

#if defined(__AVX512F__) || defined(KERNEL_AVX2)
/* Sixteen E4M3 codes as float16 bit patterns worth value / 256, without
 * a table: E4M3's exponent and mantissa shifted up by 7 are a float16
 * with bias 15 instead of 7 (its subnormals are float16 subnormals, which
 * the conversion makes normal float32s exactly). No code gives a float16
 * NaN or infinity (the exponent stays below 16); the NaN codes 0x7F and
 * 0xFF come out as +-480 / 256 and are caught apart (nan_seen). */
static inline __m256i e4m3_f16(__m128i q)
{
    /* sign-extended and shifted by 7, the sign lands on bit 15 and a copy
     * on bit 14, which the mask clears: two operations for the pattern */
    __m256i c = _mm256_cvtepi8_epi16(q);
    return _mm256_and_si256(_mm256_slli_epi16(c, 7), _mm256_set1_epi16((short)0xbf80));
}

#ifdef KERNEL_AVX2
/* AVX2 makes each NaN code a NaN in place (exponent and mantissa all
 * ones: an all-ones float16 exponent): four more operations, but with 16
 * registers the AVX-512 way below spills and was 10 % slower. */
typedef int nan_seen;
static inline nan_seen nan_none(void) { return 0; }
static inline int nan_any(nan_seen s) { return s; }
static inline vf v_e4m3(const uint8_t *p, nan_seen *seen)
{
    (void)seen;
    __m256i h = e4m3_f16(_mm_loadu_si128((const __m128i *)(const void *)p));
    __m256i em = _mm256_and_si256(h, _mm256_set1_epi16(0x3f80));
    __m256i nan = _mm256_cmpeq_epi16(em, _mm256_set1_epi16(0x3f80));
    h = _mm256_or_si256(h, _mm256_and_si256(nan, _mm256_set1_epi16(0x7c00)));
    return (vf){_mm256_cvtph_ps(_mm256_castsi256_si128(h)),
                _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1))};
}
#else
/* AVX-512 looks for the NaN codes off the products' path: the largest
 * low 7 bits of every code a tile reads (one byte max per 16 codes
 * instead of four operations on each); a tile that saw 0x7F makes the
 * rows holding one NaN (nan_rows). */
typedef __m128i nan_seen;
static inline nan_seen nan_none(void) { return _mm_setzero_si128(); }
static inline int nan_any(nan_seen s)
{
    return _mm_movemask_epi8(_mm_cmpeq_epi8(s, _mm_set1_epi8(0x7f))) != 0;
}
static inline vf v_e4m3(const uint8_t *p, nan_seen *seen)
{
    __m128i q = _mm_loadu_si128((const __m128i *)(const void *)p);
    *seen = _mm_max_epu8(*seen, _mm_and_si128(q, _mm_set1_epi8(0x7f)));
    return v_e4m3q(q);
}
#endif
#endif

#ifndef MV_R
#define MV_R 4 /* rows at a time in a matrix-vector product */
#endif
#if MV_R > MM_R
#define TILE_R MV_R
#else
#define TILE_R MM_R
#endif

const char *qm_kernel_isa(void) { return KERNEL_ISA; }

static inline float w_at(int dt, const float *tab, const uint8_t *p, size_t i)
{
    return dt == DT_BF16 ? bf16_at(p, i) : dt == DT_F16 ? f16_at(tab, p, i) : f32_at(p, i);
}

/* Unrolled tile loops let the compiler keep acc[][] in registers (it does
 * so only once every index is a constant). */
#define UNROLL _Pragma("GCC unroll 8")

/* FP8 rows r0.. of m: each weight is its code's value times its block's
 * scale, rounded once to float32 (what qm_mat_row gives), then summed as
 * tile() sums: lane j takes c = j, j + 16, ..., the last cols % 16 one by
 * one, so every tile shape gives the same bits. In registers the codes
 * are value / 256 (e4m3_f16) and the scale carries the 256: both exact,
 * so the product rounds as table value x scale does in the tail. A run of
 * 16-column chunks inside one block shares a broadcast scale; a chunk
 * across a block edge (block_cols not a multiple of 16) gets one per lane. */
/* Rows r0.. of a tile that read a NaN code (0x7F, 0xFF) in their first
 * c16 columns: their sums are NaN, as the table's NaN would have made
 * them. Never called for weights a quantiser wrote. */
static __attribute__((noinline, cold)) void
nan_rows(const qm_mat *m, int r0, int nr, int c16, int nt, float *out, size_t ldo)
{
    for (int r = 0; r < nr; r++) {
        const uint8_t *w = m->data + (size_t)(r0 + r) * m->cols;
        int c = 0;
        while (c < c16 && (w[c] & 0x7f) != 0x7f)
            c++;
        for (int t = 0; c < c16 && t < nt; t++)
            out[t * ldo + r] = NAN;
    }
}

static inline __attribute__((always_inline)) void
tile8(const float *tab, const qm_mat *m, int r0, int nr, const float *x, size_t ldx, int nt,
      float *out, size_t ldo)
{
    int cols = m->cols, bk = m->block_cols, c16 = cols & ~15;
    const uint8_t *w[TILE_R], *sr[TILE_R];
    const uint8_t *next = nt == 1 && nr == MV_R && r0 + 2 * nr <= m->rows
                              ? m->data + (size_t)(r0 + nr) * cols
                              : NULL;
    vf acc[TILE_R][MM_T], sv[TILE_R];
    nan_seen seen = nan_none();
    UNROLL
    for (int r = 0; r < nr; r++) {
        w[r] = m->data + (size_t)(r0 + r) * cols;
        sr[r] = scale_row(m, r0 + r);
        UNROLL
        for (int t = 0; t < nt; t++)
            acc[r][t] = v_zero();
    }
    for (int i = 0, run_end = 0; i < c16; i += 16) {
        if (i + 16 > run_end) {
            int j = i / bk;
            run_end = (j + 1) * bk;
            if (i + 16 <= run_end) {
                UNROLL
                for (int r = 0; r < nr; r++)
                    sv[r] = v_set1(scale_at(m, sr[r], (size_t)j) * 256.0f);
            } else {
                run_end = i + 16;
                UNROLL
                for (int r = 0; r < nr; r++) {
                    float l[16];
                    for (int k = 0; k < 16; k++)
                        l[k] = scale_at(m, sr[r], (size_t)((i + k) / bk)) * 256.0f;
                    sv[r] = v_f32(l);
                }
            }
        }
        vf wv[TILE_R];
        if (next && i % 64 == 0) { /* as tile(): the next rows, by hand */
            UNROLL
            for (int r = 0; r < nr; r++)
                __builtin_prefetch(next + (size_t)r * cols + i, 0, 0);
        }
        UNROLL
        for (int r = 0; r < nr; r++)
            wv[r] = v_mul(v_e4m3(w[r] + i, &seen), sv[r]);
        UNROLL
        for (int t = 0; t < nt; t++) {
            vf xv = v_f32(x + t * ldx + i);
            if (nr > 1)
                v_keep(&xv);
            UNROLL
            for (int r = 0; r < nr; r++)
                acc[r][t] = v_fma(acc[r][t], wv[r], xv);
        }
    }
    UNROLL
    for (int r = 0; r < nr; r++) {
        UNROLL
        for (int t = 0; t < nt; t++) {
            float l[16], s = 0;
            v_store(l, acc[r][t]);
            for (int j = 0; j < 16; j++)
                s += l[j];
            for (int c = c16; c < cols; c++) {
                float wc = tab[w[r][c]] * scale_at(m, sr[r], (size_t)(c / bk));
                s = MADD(s, wc, x[t * ldx + c]);
            }
            out[t * ldo + r] = s;
        }
    }
    if (__builtin_expect(nan_any(seen), 0))
        nan_rows(m, r0, nr, c16, nt, out, ldo);
}

/* nr rows of m from row r (rb bytes apart) x nt tokens at x (ldx floats
 * apart) into out[t * ldo + r]. Inlined with constant dt, nr, nt. */
static inline __attribute__((always_inline)) void
tile(int dt, const float *tab, const qm_mat *m, int r0, size_t rb, int nr, const float *x,
     size_t ldx, int nt, float *out, size_t ldo)
{
    if (dt == DT_E4M3) {
        tile8(tab, m, r0, nr, x, ldx, nt, out, ldo);
        return;
    }
    const uint8_t *w = m->data + (size_t)r0 * rb;
    const int cols = m->cols;
    const size_t esz = dt == DT_F32 ? 4 : 2;
    vf acc[TILE_R][MM_T];
    UNROLL
    for (int r = 0; r < nr; r++) {
        UNROLL
        for (int t = 0; t < nt; t++)
            acc[r][t] = v_zero();
    }
    /* decode: the next MV_R rows asked for while these compute */
    const uint8_t *next = nt == 1 && nr == MV_R && r0 + 2 * nr <= m->rows ? w + nr * rb : NULL;
    int i = 0;
    for (; i + 16 <= cols; i += 16) {
        vf wv[TILE_R];
        if (next && (esz * (size_t)i) % 64 == 0) {
            UNROLL
            for (int r = 0; r < nr; r++)
                __builtin_prefetch(next + r * rb + esz * (size_t)i, 0, 0);
        }
        UNROLL
        for (int r = 0; r < nr; r++)
            wv[r] = v_w(dt, w + r * rb + esz * (size_t)i, tab);
        UNROLL
        for (int t = 0; t < nt; t++) {
            vf xv = v_f32(x + t * ldx + i);
            if (nr > 1)
                v_keep(&xv);
            UNROLL
            for (int r = 0; r < nr; r++)
                acc[r][t] = v_fma(acc[r][t], wv[r], xv);
        }
    }
    UNROLL
    for (int r = 0; r < nr; r++) {
        UNROLL
        for (int t = 0; t < nt; t++) {
            float l[16], s = 0;
            v_store(l, acc[r][t]);
            for (int j = 0; j < 16; j++)
                s += l[j];
            for (int c = i; c < cols; c++)
                s = MADD(s, w_at(dt, tab, w + r * rb, (size_t)c), x[t * ldx + c]);
            out[t * ldo + r] = s;
        }
    }
}

/* The shapes, each compiled with constant sizes: MV_R x 1 (decode), MM_R
 * x nt for nt <= MM_T (prefill) and 1 x 1 (the last rows of a count that
 * is not a multiple). The caller asks for one of these. */
static inline __attribute__((always_inline)) void
tile_shapes(int dt, const float *tab, const qm_mat *m, int r0, size_t rb, int nr,
            const float *x, size_t ldx, int nt, float *out, size_t ldo)
{
#define SHAPE(R, T) tile(dt, tab, m, r0, rb, R, x, ldx, T, out, ldo)
    if (nr == MV_R && nt == 1) {
        SHAPE(MV_R, 1);
    } else if (nr == MM_R) {
        switch (nt) {
        case 1: SHAPE(MM_R, 1); break;
        case 2: SHAPE(MM_R, 2); break;
#if MM_T >= 3
        case 3: SHAPE(MM_R, 3); break;
#endif
#if MM_T >= 4
        case 4: SHAPE(MM_R, 4); break;
#endif
#if MM_T >= 5
        case 5: SHAPE(MM_R, 5); break;
#endif
#if MM_T >= 6
        case 6: SHAPE(MM_R, 6); break;
#endif
#if MM_T >= 7
        case 7: SHAPE(MM_R, 7); break;
#endif
#if MM_T >= 8
        case 8: SHAPE(MM_R, 8); break;
#endif
        }
    } else {
        SHAPE(1, 1);
    }
#undef SHAPE
}

typedef void (*tile_fn)(const float *tab, const qm_mat *m, int r0, size_t rb, int nr,
                        const float *x, size_t ldx, int nt, float *out, size_t ldo);
#define TILE_FN(NAME, DT)                                                                  \
    static void NAME(const float *tab, const qm_mat *m, int r0, size_t rb, int nr,         \
                     const float *x, size_t ldx, int nt, float *out, size_t ldo)           \
    {                                                                                      \
        tile_shapes(DT, tab, m, r0, rb, nr, x, ldx, nt, out, ldo);                         \
    }
TILE_FN(tiles_bf16, DT_BF16)
TILE_FN(tiles_f16, DT_F16)
TILE_FN(tiles_f32, DT_F32)
TILE_FN(tiles_e4m3, DT_E4M3)

/* The kernel of a matrix: its tiles, its table (f16, e4m3) or NULL, row
 * bytes. */
typedef struct {
    tile_fn fn;
    const float *tab;
    size_t rb;
} kern;

static kern kern_of(const qm_mat *m)
{
    kern k = {tiles_f32, NULL, (size_t)m->cols * 4};
    if (m->dtype == ST_BF16) {
        k.fn = tiles_bf16;
        k.rb = (size_t)m->cols * 2;
    } else if (m->dtype == ST_F16) {
        k.fn = tiles_f16;
        k.tab = f16_table();
        k.rb = (size_t)m->cols * 2;
    } else if (m->dtype == ST_F8_E4M3) {
        k.fn = tiles_e4m3;
        k.tab = qm_e4m3_table();
        k.rb = (size_t)m->cols;
    }
    return k;
}

void qm_matvec_rows(float *out, const qm_mat *m, const float *x, int r0, int r1)
{
    kern k = kern_of(m);
    int r = r0;
    for (; r + MV_R <= r1; r += MV_R)
        k.fn(k.tab, m, r, k.rb, MV_R, x, 0, 1, out + r, 0);
    for (; r < r1; r++)
        k.fn(k.tab, m, r, k.rb, 1, x, 0, 1, out + r, 0);
}

/* ---- products of several matrices through the team ----
 * The matrices are laid end to end and their rows handed out in chunks, a
 * thread taking the next one when it is done: on a shared host a thread
 * that is slowed down (its core lent to another guest) leaves its rows to
 * the others instead of holding up the whole product, as a fixed split
 * made it. Eight chunks per thread: each starts its first rows cold. Which
 * thread computes a row does not change its bits. */
#define CHUNKS_PER_THREAD 8

typedef struct rows_job rows_job;
struct rows_job {
    int n;                      /* matrices */
    const qm_mat *const *mats;
    int total;                  /* rows of all matrices */
    int chunk;                  /* rows per chunk */
    atomic_int next;            /* the next chunk to take */
    /* rows [a, b) of matrix k; j is the first member of the caller's job */
    void (*rows)(const rows_job *j, int k, int a, int b);
};

/* Rows [lo, hi) of the matrices laid end to end. */
static void rows_range(const rows_job *j, int lo, int hi)
{
    int base = 0;
    for (int k = 0; k < j->n && lo < hi; k++) {
        int rows = j->mats[k]->rows;
        int a = lo - base, b = hi - base;
        if (a < rows && b > 0)
            j->rows(j, k, a < 0 ? 0 : a, b > rows ? rows : b);
        base += rows;
    }
}

static void rows_chunks(void *arg, int i, int n)
{
    rows_job *j = arg;
    (void)i, (void)n;
    for (;;) {
        int64_t lo = (int64_t)atomic_fetch_add(&j->next, 1) * j->chunk;
        if (lo >= j->total)
            break;
        rows_range(j, (int)lo, lo + j->chunk < j->total ? (int)lo + j->chunk : j->total);
    }
}

/* Every row of j's matrices, each for n_tok tokens: on the team when that
 * is work for more than one thread, in chunks of a multiple of unit rows. */
static void rows_run(team *t, rows_job *j, int unit, int n_tok)
{
    j->total = 0;
    for (int k = 0; k < j->n; k++)
        j->total += j->mats[k]->rows;
    if (!t || team_size(t) == 1 || (int64_t)j->total * n_tok < 64) {
        rows_range(j, 0, j->total);
        return;
    }
    int per = CHUNKS_PER_THREAD * team_size(t);
    int c = (j->total + per - 1) / per;
    c = (c + unit - 1) / unit * unit;
    j->chunk = c < unit ? unit : c;
    atomic_init(&j->next, 0);
    team_run(t, rows_chunks, j);
}

typedef struct {
    rows_job r; /* first */
    float *const *out;
    const float *const *xs;
} batch_job;

static void batch_rows(const rows_job *r, int k, int a, int b)
{
    const batch_job *j = (const batch_job *)r;
    qm_matvec_rows(j->out[k], r->mats[k], j->xs[k], a, b);
}

void qm_matvec_batch(team *t, int n, float *const *out, const qm_mat *const *mats,
                     const float *const *xs)
{
    if (n <= 0)
        return;
    batch_job j = {.r = {.n = n, .mats = mats, .rows = batch_rows}, .out = out, .xs = xs};
    rows_run(t, &j.r, MV_R, 1);
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
 * Rows per block: a block of weights (at most ~128 KB) stays in L2 while
 * every token tile of the batch passes over it. */
static int mm_block_rows(size_t row_bytes)
{
#ifndef MM_BLOCK_KB
#define MM_BLOCK_KB 128
#endif
    size_t n = ((size_t)MM_BLOCK_KB << 10) / (row_bytes ? row_bytes : 1);
    n -= n % MM_R;
    return n < MM_R ? MM_R : n > 256 ? 256 : (int)n;
}

void qm_matmat_rows(float *out, int ldo, const qm_mat *m, const float *x, int ldx,
                    int n_tok, int r0, int r1)
{
    kern k = kern_of(m);
    int block = mm_block_rows(k.rb);
    for (int b0 = r0; b0 < r1; b0 += block) {
        int b1 = b0 + block < r1 ? b0 + block : r1;
        for (int t = 0; t < n_tok; t += MM_T) {
            int nt = n_tok - t < MM_T ? n_tok - t : MM_T;
            const float *xt = x + (size_t)t * ldx;
            float *ot = out + (size_t)t * ldo;
            int r = b0;
            for (; r + MM_R <= b1; r += MM_R)
                k.fn(k.tab, m, r, k.rb, MM_R, xt, (size_t)ldx, nt, ot + r, (size_t)ldo);
            for (; r < b1; r++) /* the last rows % MM_R, one (row, token) at a time */
                for (int e = 0; e < nt; e++)
                    k.fn(k.tab, m, r, k.rb, 1, xt + (size_t)e * ldx, 0, 1,
                         ot + (size_t)e * ldo + r, 0);
        }
    }
}

typedef struct {
    rows_job r; /* first */
    float *const *out;
    const int *ldo;
    const float *x;
    int ldx, n_tok;
} mm_job;

static void mm_rows(const rows_job *r, int k, int a, int b)
{
    const mm_job *j = (const mm_job *)r;
    qm_matmat_rows(j->out[k], j->ldo[k], r->mats[k], j->x, j->ldx, j->n_tok, a, b);
}

void qm_matmat_multi(team *t, int n, float *const *out, const int *ldo,
                     const qm_mat *const *mats, const float *x, int ldx, int n_tok)
{
    if (n <= 0 || n_tok <= 0)
        return;
    mm_job j = {.r = {.n = n, .mats = mats, .rows = mm_rows}, .out = out, .ldo = ldo, .x = x,
                .ldx = ldx, .n_tok = n_tok};
    rows_run(t, &j.r, MM_R, n_tok);
}

void qm_matmat(team *t, float *out, int ldo, const qm_mat *m, const float *x, int ldx,
               int n_tok)
{
    float *o[1] = {out};
    const qm_mat *ms[1] = {m};
    int l[1] = {ldo};
    qm_matmat_multi(t, 1, o, l, ms, x, ldx, n_tok);
}
