/* kernels.c - the matrix products of common/model/matvec.c against a
 * float64 reference, for every weight dtype (FP8 with F32 and BF16 scales and
 * blocks of several widths among them) and shapes with edges (rows
 * not a multiple of the tile, columns not a multiple of 16, one token,
 * token counts around the tile's).
 *
 * The Makefile builds it three times with matvec.c compiled in: with the
 * build's -march (AVX-512 on a machine that has it), without AVX-512, and
 * portable (no AVX2, no FMA), so that every path runs on one machine;
 * tests/cli/kernels.sh runs the three and compares their outputs.
 *
 *   kernels [--expect ISA] [--dump FILE]
 *
 * Checks (one "ok"/"FAIL" line each, for tests/run.sh):
 *   - the ISA compiled is the one expected;
 *   - each output is within rounding of the float64 sum;
 *   - matrix-matrix outputs equal the matrix-vector ones bit for bit,
 *     whatever the row range and token count, split over threads or not;
 *   - --dump writes every output (float32, in a fixed order) so that two
 *     builds can be compared byte for byte. */
#include "model/matvec.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

static void check(int cond, const char *name, const char *evidence)
{
    if (cond)
        printf("ok %s\n", name);
    else
        printf("FAIL %s: %s\n", name, evidence);
    failures += !cond;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double urand(void) /* [-1, 1) */
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

/* float to f16, truncating; small values become subnormals */
static uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    int e = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (e >= 31)
        return sign | 0x7bff;
    if (e <= 0) {
        if (e < -10)
            return sign;
        man |= 0x800000;
        return sign | (uint16_t)(man >> (14 - e));
    }
    return sign | (uint16_t)(e << 10) | (uint16_t)(man >> 13);
}

static double f16_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v = e ? ldexp(1024 + man, e - 25) : ldexp(man, -24);
    return h & 0x8000 ? -v : v;
}

static double bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* E4M3 from its definition (bias 7, subnormals at exponent 0) */
static double e4m3_value(uint8_t c)
{
    int e = (c >> 3) & 15, man = c & 7;
    double v = e ? ldexp(8 + man, e - 10) : ldexp(man, -9);
    return c & 0x80 ? -v : v;
}

typedef struct {
    st_dtype dt;
    int rows, cols, n_tok;
    st_dtype sdt;      /* FP8: scale dtype and block */
    int br, bc;
} shape;

/* One shape: weights and inputs from the generator; returns 0 when every
 * check of it holds, with a description of the first miss in why. */
static int run_shape(const shape *s, team *tm, FILE *dump, char *why, size_t why_len,
                     int *identical)
{
    size_t n = (size_t)s->rows * s->cols;
    size_t esz = s->dt == ST_F32 ? 4 : s->dt == ST_F8_E4M3 ? 1 : 2;
    uint8_t *w = g_malloc(n * esz + 64);
    double *wd = g_new(double, n);
    uint8_t *wp = w + 1; /* tensor data need not be aligned */
    /* FP8: a scale per block, magnitudes 2^-12..2^-4 as amax / 448 gives */
    int gr = s->br ? (s->rows + s->br - 1) / s->br : 0;
    int gc = s->bc ? (s->cols + s->bc - 1) / s->bc : 0;
    size_t ssz = s->sdt == ST_BF16 ? 2 : 4;
    uint8_t *sb = g_malloc((size_t)gr * gc * ssz + 64), *sp = sb + 3;
    double *sd = g_new(double, (size_t)gr * gc + 1);
    for (int k = 0; k < gr * gc; k++) {
        float f = (float)ldexp(1.0 + 0.5 * urand(), -4 - (int)(8 * fabs(urand())));
        if (s->sdt == ST_BF16) {
            uint16_t h = f32_to_bf16(f);
            memcpy(sp + 2 * k, &h, 2);
            sd[k] = bf16_value(h);
        } else {
            memcpy(sp + 4 * k, &f, 4);
            sd[k] = f;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (s->dt == ST_F8_E4M3) {
            uint8_t c = (uint8_t)(urand() * 128 + 128);
            c = (c & 0x7f) == 0x7f ? c ^ 1 : c; /* no NaN codes */
            wp[i] = c;
            size_t r = i / s->cols, col = i % s->cols;
            wd[i] = e4m3_value(c) * sd[r / s->br * gc + col / s->bc];
            continue;
        }
        /* a spread of magnitudes: some tiny (f16 subnormals), some large */
        float f = (float)(urand() * (i % 7 == 0 ? 1e-6 : i % 5 == 0 ? 8.0 : 1.0));
        if (s->dt == ST_BF16) {
            uint16_t h = f32_to_bf16(f);
            memcpy(wp + 2 * i, &h, 2);
            wd[i] = bf16_value(h);
        } else if (s->dt == ST_F16) {
            uint16_t h = f32_to_f16(f);
            memcpy(wp + 2 * i, &h, 2);
            wd[i] = f16_value(h);
        } else {
            memcpy(wp + 4 * i, &f, 4);
            wd[i] = f;
        }
    }
    int ldx = s->cols + 3, ldo = s->rows + 5;
    float *x = g_new(float, (size_t)s->n_tok * ldx);
    for (size_t i = 0; i < (size_t)s->n_tok * ldx; i++)
        x[i] = (float)urand();
    float *mv = g_new0(float, (size_t)s->n_tok * ldo), *mm = g_new0(float, (size_t)s->n_tok * ldo);
    float *mt = g_new0(float, (size_t)s->n_tok * ldo), *mp = g_new0(float, (size_t)s->n_tok * ldo);
    qm_mat m = {.data = wp, .dtype = s->dt, .rows = s->rows, .cols = s->cols, .scale = sp,
                .scale_dtype = s->sdt, .block_rows = s->br, .block_cols = s->bc};
    int ok = 1;

    for (int t = 0; t < s->n_tok; t++) {
        /* matrix-vector in two uneven row ranges, as two threads would */
        int cut = s->rows / 3;
        qm_matvec_rows(mv + (size_t)t * ldo, &m, x + (size_t)t * ldx, 0, cut);
        qm_matvec_rows(mv + (size_t)t * ldo, &m, x + (size_t)t * ldx, cut, s->rows);
    }
    /* matrix-matrix: all rows at once, then rows [1, rows) with a
     * different token split, and through the team */
    qm_matmat_rows(mm, ldo, &m, x, ldx, s->n_tok, 0, s->rows);
    int t1 = s->n_tok / 2;
    qm_matmat_rows(mp, ldo, &m, x, ldx, t1, 0, s->rows);
    qm_matmat_rows(mp + (size_t)t1 * ldo, ldo, &m, x + (size_t)t1 * ldx, ldx, s->n_tok - t1, 0,
                   s->rows);
    qm_matmat(tm, mt, ldo, &m, x, ldx, s->n_tok);
    /* matrix-vector through the team: the tokens as a batch of products
     * of the same matrix, whose rows the threads take in chunks */
    float *mb = g_new0(float, (size_t)s->n_tok * ldo);
    {
        float **outs = g_new(float *, s->n_tok);
        const qm_mat **mats = g_new(const qm_mat *, s->n_tok);
        const float **xs = g_new(const float *, s->n_tok);
        for (int t = 0; t < s->n_tok; t++) {
            outs[t] = mb + (size_t)t * ldo;
            mats[t] = &m;
            xs[t] = x + (size_t)t * ldx;
        }
        qm_matvec_batch(tm, s->n_tok, outs, mats, xs);
        g_free(outs);
        g_free(mats);
        g_free(xs);
    }

    for (int t = 0; t < s->n_tok && ok; t++) {
        for (int r = 0; r < s->rows; r++) {
            double ref = 0, mag = 0;
            for (int c = 0; c < s->cols; c++) {
                double p = wd[(size_t)r * s->cols + c] * x[(size_t)t * ldx + c];
                ref += p;
                mag += fabs(p);
            }
            float got = mv[(size_t)t * ldo + r];
            /* 16 float32 sums of cols / 16 terms, then the lanes and the
             * tail: error below that depth * eps * sum |p| (plus one eps
             * per product where the products are rounded, without FMA,
             * and one where FP8 weights are dequantised) */
            double tol = 1e-30 + (s->cols / 16 + 16 + s->cols % 16 + 2) * 6e-8 * mag;
            if (!(fabs(got - ref) <= tol)) {
                snprintf(why, why_len, "%s %dx%d token %d row %d: %.9g, float64 says %.9g",
                         st_dtype_name(s->dt), s->rows, s->cols, t, r, got, ref);
                ok = 0;
                break;
            }
        }
    }
    size_t bytes = sizeof(float) * (size_t)s->n_tok * ldo;
    if (memcmp(mv, mm, bytes) || memcmp(mv, mp, bytes) || memcmp(mv, mt, bytes) ||
        memcmp(mv, mb, bytes)) {
        if (ok)
            snprintf(why, why_len, "%s %dx%d x %d tokens: matmat or a batch through the team differs from matvec",
                     st_dtype_name(s->dt), s->rows, s->cols, s->n_tok);
        *identical = 0;
    }
    if (dump)
        fwrite(mv, 1, bytes, dump);
    g_free(w);
    g_free(wd);
    g_free(sb);
    g_free(sd);
    g_free(x);
    g_free(mv);
    g_free(mm);
    g_free(mt);
    g_free(mp);
    g_free(mb);
    return ok;
}

/* The NaN codes 0x7F and 0xFF: a row holding one gives NaN, by decode
 * and prefill, whether the code falls in the 16-column chunks (where the
 * SIMD paths decode without a table) or in the tail; the other rows give
 * the bits they give without it. */
static void nan_codes(team *tm)
{
    enum { R = 13, C = 131, NT = 6 };
    uint8_t *w = g_new(uint8_t, R * C), *clean = g_new(uint8_t, R * C);
    float scale[2 * 9], x[NT * C], a[NT * R], b[NT * R], v[R], vc[R];
    for (int i = 0; i < R * C; i++) {
        uint8_t c = (uint8_t)(urand() * 128 + 128);
        clean[i] = w[i] = (c & 0x7f) == 0x7f ? c ^ 1 : c;
    }
    for (int i = 0; i < 18; i++)
        scale[i] = (float)ldexp(1.0, -6 - i % 3);
    for (int i = 0; i < NT * C; i++)
        x[i] = (float)urand();
    /* row 2 and 11 in a chunk (+ and - NaN), row 7 in the tail */
    w[2 * C + 40] = 0x7f;
    w[11 * C + 3] = 0xff;
    w[7 * C + 130] = 0x7f;
    qm_mat m = {.data = w, .dtype = ST_F8_E4M3, .rows = R, .cols = C,
                .scale = (const uint8_t *)scale, .scale_dtype = ST_F32,
                .block_rows = 8, .block_cols = 16};
    qm_mat mc = m;
    mc.data = clean;
    qm_matvec_rows(v, &m, x, 0, R);
    qm_matvec_rows(vc, &mc, x, 0, R);
    qm_matmat(tm, a, R, &m, x, C, NT);
    qm_matmat(tm, b, R, &mc, x, C, NT);
    int ok = 1;
    char ev[128] = "";
    for (int r = 0; r < R && ok; r++) {
        int nan_row = r == 2 || r == 7 || r == 11;
        for (int t = 0; t < NT && ok; t++) {
            float got = a[t * R + r], want = b[t * R + r];
            if (nan_row ? !isnan(got) : memcmp(&got, &want, 4) != 0) {
                snprintf(ev, sizeof ev, "prefill row %d token %d: %g (clean %g)", r, t, got, want);
                ok = 0;
            }
        }
        if (ok && (nan_row ? !isnan(v[r]) : memcmp(&v[r], &vc[r], 4) != 0)) {
            snprintf(ev, sizeof ev, "decode row %d: %g (clean %g)", r, v[r], vc[r]);
            ok = 0;
        }
    }
    check(ok, "kernels-F8_E4M3-nan-codes", ev);
    g_free(w);
    g_free(clean);
}

int main(int argc, char **argv)
{
    const char *expect = NULL, *dump_path = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--expect"))
            expect = argv[i + 1];
        else if (!strcmp(argv[i], "--dump"))
            dump_path = argv[i + 1];
    }
    const char *isa = qm_kernel_isa();
    printf("kernel isa: %s\n", isa);
    if (expect) {
        char ev[128];
        snprintf(ev, sizeof ev, "compiled for %s, expected %s", isa, expect);
        check(!strcmp(isa, expect), "kernels-isa", ev);
    }
    FILE *dump = dump_path ? fopen(dump_path, "wb") : NULL;
    if (dump_path && !dump) {
        fprintf(stderr, "kernels: cannot write '%s'\n", dump_path);
        return 2;
    }
    GError *err = NULL;
    team *tm = team_new(2, &err);
    if (!tm) {
        fprintf(stderr, "kernels: %s\n", err->message);
        return 2;
    }
    /* rows around the tiles (4 x 6 and 2 x 2), columns around 16 */
    static const int rows[] = {1, 3, 4, 7, 13, 64, 258};
    static const int cols[] = {1, 15, 16, 17, 48, 131, 2048};
    static const int toks[] = {1, 2, 5, 6, 7, 13, 19};
    /* FP8: blocks whose columns are a multiple of 16 (one scale per run of
     * chunks) and not (a scale per lane where a chunk crosses a block
     * edge), rows across block edges inside a tile; F32 and BF16 scales */
    static const shape kinds[] = {
        {ST_BF16, 0, 0, 0, ST_F32, 0, 0},
        {ST_F16, 0, 0, 0, ST_F32, 0, 0},
        {ST_F32, 0, 0, 0, ST_F32, 0, 0},
        {ST_F8_E4M3, 0, 0, 0, ST_F32, 3, 32},
        {ST_F8_E4M3, 0, 0, 0, ST_BF16, 24, 40},
        {ST_F8_E4M3, 0, 0, 0, ST_F32, 2, 5},
    };
    for (size_t d = 0; d < G_N_ELEMENTS(kinds); d++) {
        int all_ok = 1, identical = 1;
        char why[256] = "", name[96], kind[48];
        const shape *k = &kinds[d];
        if (k->dt == ST_F8_E4M3)
            snprintf(kind, sizeof kind, "%s-%s-%dx%d", st_dtype_name(k->dt),
                     st_dtype_name(k->sdt), k->br, k->bc);
        else
            snprintf(kind, sizeof kind, "%s", st_dtype_name(k->dt));
        for (size_t i = 0; i < G_N_ELEMENTS(rows); i++)
            for (size_t j = 0; j < G_N_ELEMENTS(cols); j++) {
                shape s = {k->dt, rows[i], cols[j], toks[(i + j) % G_N_ELEMENTS(toks)],
                           k->sdt, k->br, k->bc};
                if (s.rows * s.cols > 64 * 2048)
                    s.n_tok = 3;
                char w1[256] = "";
                if (!run_shape(&s, tm, dump, w1, sizeof w1, &identical) && all_ok) {
                    all_ok = 0;
                    memcpy(why, w1, sizeof why);
                } else if (!identical && !why[0]) {
                    memcpy(why, w1, sizeof why);
                }
            }
        snprintf(name, sizeof name, "kernels-%s-float64", kind);
        check(all_ok, name, why);
        snprintf(name, sizeof name, "kernels-%s-matmat-is-matvec", kind);
        check(identical, name, why);
    }
    nan_codes(tm);
    team_free(tm);
    if (dump && fclose(dump)) {
        fprintf(stderr, "kernels: cannot write '%s'\n", dump_path);
        return 2;
    }
    return failures ? 1 : 0;
}
