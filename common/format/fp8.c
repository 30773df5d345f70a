/* fp8.c - E4M3 decoding, quantization_config, scale checks, FP8 rows. */
#include "format/fp8.h"

#include <math.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "base/util.h"

#define FP8_MAX_BLOCK 65536
#define SCALE_SUFFIX "_scale_inv"

static float e4m3_table[256];

static gpointer e4m3_build(gpointer unused)
{
    (void)unused;
    for (int c = 0; c < 256; c++) {
        int e = (c >> 3) & 0xF, m = c & 7;
        float v;
        if (e == 15 && m == 7)
            v = NAN;  /* the fn variant spends only S.1111.111 on NaN: no infinity */
        else if (e == 0)
            v = ldexpf((float)m, -9);  /* subnormal: m/8 * 2^(1-7) */
        else
            v = ldexpf((float)(8 + m), e - 10);  /* (1 + m/8) * 2^(e-7) */
        e4m3_table[c] = (c & 0x80) ? -v : v;
    }
    return NULL;
}

const float *qm_e4m3_table(void)
{
    static GOnce once = G_ONCE_INIT;
    g_once(&once, e4m3_build, NULL);
    return e4m3_table;
}

float qm_e4m3(uint8_t code)
{
    return qm_e4m3_table()[code];
}

/* ---- quantization_config ---- */

static const cJSON *member(const cJSON *o, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return j && !cJSON_IsNull(j) ? j : NULL;
}

/* An optional string key that must equal `want` when present. */
static int only_value(const cJSON *q, const char *key, const char *want, const char *path,
                      const char *why, GError **err)
{
    const cJSON *j = member(q, key);
    if (!j)
        return 0;
    if (!cJSON_IsString(j)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': quantization_config.%s is not a string", path, key);
        return -1;
    }
    if (strcmp(j->valuestring, want)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': quantization_config.%s '%s' is not supported (%s)", path, key,
                    j->valuestring, why);
        return -1;
    }
    return 0;
}

static int read_block(const cJSON *q, const char *path, qm_fp8_config *c, GError **err)
{
    c->block_rows = c->block_cols = 128;
    const cJSON *b = member(q, "weight_block_size");
    if (!b)
        return 0;
    if (!cJSON_IsArray(b) || cJSON_GetArraySize(b) != 2)
        goto bad;
    int v[2];
    for (int i = 0; i < 2; i++) {
        const cJSON *x = cJSON_GetArrayItem(b, i);
        if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) ||
            x->valuedouble < 1 || x->valuedouble > FP8_MAX_BLOCK)
            goto bad;
        v[i] = (int)x->valuedouble;
    }
    c->block_rows = v[0];
    c->block_cols = v[1];
    return 0;
bad:
    g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                "'%s': quantization_config.weight_block_size is not two integers in 1..%d",
                path, FP8_MAX_BLOCK);
    return -1;
}

static int read_not_convert(const cJSON *q, const char *path, qm_fp8_config *c, GError **err)
{
    const cJSON *m = member(q, "modules_to_not_convert");
    GPtrArray *a = g_ptr_array_new();
    if (m && !cJSON_IsArray(m)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': quantization_config.modules_to_not_convert is not an array", path);
        g_ptr_array_free(a, TRUE);
        return -1;
    }
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, m) {
        if (!cJSON_IsString(x) || !x->valuestring[0]) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': quantization_config.modules_to_not_convert[%d] is not a "
                        "non-empty string", path, i);
            g_ptr_array_set_free_func(a, g_free);
            g_ptr_array_free(a, TRUE);
            return -1;
        }
        g_ptr_array_add(a, g_strdup(x->valuestring));
        i++;
    }
    g_ptr_array_add(a, NULL);
    c->not_convert = (char **)g_ptr_array_free(a, FALSE);
    return 0;
}

int qm_fp8_config_read(const cJSON *cfg, const char *path, qm_fp8_config **out,
                       GError **err)
{
    *out = NULL;
    const cJSON *q = cfg ? member(cfg, "quantization_config") : NULL;
    if (!q)
        return 0;
    if (!cJSON_IsObject(q)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': quantization_config is not an object", path);
        return -1;
    }
    const cJSON *meth = member(q, "quant_method");
    if (!meth || !cJSON_IsString(meth)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': quantization_config has no quant_method string", path);
        return -1;
    }
    if (only_value(q, "quant_method", "fp8", path, "only fp8 block-scaled weights are", err) ||
        only_value(q, "fmt", "e4m3", path, "only E4M3 is decoded", err) ||
        only_value(q, "activation_scheme", "dynamic", path,
                   "activations stay float32; only dynamic checkpoints are", err))
        return -1;
    qm_fp8_config *c = g_new0(qm_fp8_config, 1);
    if (read_block(q, path, c, err) || read_not_convert(q, path, c, err)) {
        qm_fp8_config_free(c);
        return -1;
    }
    *out = c;
    return 1;
}

void qm_fp8_config_free(qm_fp8_config *c)
{
    if (!c)
        return;
    g_strfreev(c->not_convert);
    g_free(c);
}

static size_t module_len(const char *name)
{
    size_t n = strlen(name);
    if (g_str_has_suffix(name, ".weight" SCALE_SUFFIX))
        return n - strlen(".weight" SCALE_SUFFIX);
    if (g_str_has_suffix(name, ".weight"))
        return n - strlen(".weight");
    return n;
}

gboolean qm_fp8_excluded(const qm_fp8_config *c, const char *name)
{
    if (!c || !c->not_convert)
        return FALSE;
    size_t n = module_len(name);
    for (char **m = c->not_convert; *m; m++) {
        size_t k = strlen(*m);
        if (k > n || memcmp(name + n - k, *m, k))
            continue;
        if (k == n || name[n - k - 1] == '.')
            return TRUE;
    }
    return FALSE;
}

void qm_fp8_grid(const qm_fp8_config *c, int64_t rows, int64_t cols,
                 int64_t *grid_rows, int64_t *grid_cols)
{
    *grid_rows = (rows + c->block_rows - 1) / c->block_rows;
    *grid_cols = (cols + c->block_cols - 1) / c->block_cols;
}

/* What is wrong with FP8 weight w and its scale s, or NULL (caller frees). */
static char *weight_problem(const qm_fp8_config *c, const st_tensor *w, const st_tensor *s)
{
    char sh[96], want[96], grid[96];
    if (w->ndim != 2)
        return g_strdup_printf("FP8 tensor '%s' has shape %s (block-scaled FP8 weights are "
                               "2-D)", w->name, st_shape_str(w->shape, w->ndim, sh, sizeof sh));
    if (qm_fp8_excluded(c, w->name))
        return g_strdup_printf("tensor '%s' is F8_E4M3 but its module is in "
                               "quantization_config.modules_to_not_convert", w->name);
    if (!s)
        return g_strdup_printf("FP8 weight '%s' has no '%s" SCALE_SUFFIX "'", w->name, w->name);
    if (s->dtype != ST_F32 && s->dtype != ST_BF16)
        return g_strdup_printf("scale '%s' has dtype %s (F32 or BF16 expected)", s->name,
                               st_dtype_name(s->dtype));
    int64_t g[2];
    qm_fp8_grid(c, w->shape[0], w->shape[1], &g[0], &g[1]);
    if (s->ndim != 2 || s->shape[0] != g[0] || s->shape[1] != g[1])
        return g_strdup_printf("scale '%s' has shape %s, but weight %s in %dx%d blocks needs %s",
                               s->name, st_shape_str(s->shape, s->ndim, sh, sizeof sh),
                               st_shape_str(w->shape, 2, want, sizeof want), c->block_rows,
                               c->block_cols, st_shape_str(g, 2, grid, sizeof grid));
    return NULL;
}

int qm_fp8_check_weight(const qm_fp8_config *c, const char *label,
                        const st_tensor *w, const st_tensor *s, GError **err)
{
    char *msg = weight_problem(c, w, s);
    if (!msg)
        return 0;
    g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s", label, msg);
    g_free(msg);
    return -1;
}

/* A tensor by name when the index has it: 1 found, 0 absent, -1 unreadable. */
static int lookup(ckpt *ck, const char *name, const st_tensor **t, GError **err)
{
    *t = NULL;
    if (!g_hash_table_contains(ck->shard_of, name))
        return 0;
    *t = ckpt_tensor(ck, name, 0, NULL, err);
    return *t ? 1 : -1;
}

int qm_fp8_check_ckpt(ckpt *ck, qm_fp8_problem_fn report, void *user, int *n_fp8,
                      GError **err)
{
    char *cfg_path = g_build_filename(ck->dir, "config.json", NULL);
    qm_fp8_config *c = NULL;
    int rc = 0, count = 0;
    if (qm_fp8_config_read(ck->config, cfg_path, &c, err) < 0)
        rc = -1;
    for (int i = 0; i < ck->n_names && rc >= 0; i++) {
        const char *name = ck->names[i];
        const st_tensor *t, *other;
        if (lookup(ck, name, &t, err) < 0) {
            rc = -1;
            break;
        }
        char *msg = NULL;
        if (g_str_has_suffix(name, SCALE_SUFFIX)) {
            char *wn = g_strndup(name, strlen(name) - strlen(SCALE_SUFFIX));
            int got = lookup(ck, wn, &other, err);
            if (got < 0)
                rc = -1;
            else if (!got || other->dtype != ST_F8_E4M3)
                msg = g_strdup_printf("scale '%s' has no F8_E4M3 weight '%s'", name, wn);
            g_free(wn);
        } else if (t->dtype == ST_F8_E4M3) {
            count++;
            char *sn = g_strconcat(name, SCALE_SUFFIX, NULL);
            if (!c)
                msg = g_strdup_printf("tensor '%s' is F8_E4M3 but config.json has no fp8 "
                                      "quantization_config (its block size is unknown)", name);
            else if (lookup(ck, sn, &other, err) < 0)
                rc = -1;
            else
                msg = weight_problem(c, t, other);
            g_free(sn);
        }
        if (msg && rc >= 0) {
            const ckpt_shard *sh = &ck->shards[ckpt_shard_index(ck, name)];
            if (report) {
                report(user, sh->name, name, msg);
                rc = 1;
            } else {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s", sh->path, msg);
                rc = -1;
            }
        }
        g_free(msg);
    }
    if (n_fp8)
        *n_fp8 = count;
    qm_fp8_config_free(c);
    g_free(cfg_path);
    return rc;
}

/* ---- kernels ---- */

void qm_fp8_mat_init(qm_fp8_mat *m, const qm_fp8_config *c, const st_tensor *w,
                     const uint8_t *codes, const st_tensor *s, const uint8_t *scale)
{
    *m = (qm_fp8_mat){.codes = codes, .scale = scale, .scale_dtype = s->dtype,
                      .rows = w->shape[0], .cols = w->shape[1],
                      .block_rows = c->block_rows, .block_cols = c->block_cols};
}

float qm_fp8_scale(const qm_fp8_mat *m, int64_t i, int64_t j)
{
    int64_t gc = (m->cols + m->block_cols - 1) / m->block_cols;
    int64_t k = i * gc + j;
    const uint8_t *p;
    uint32_t bits;
    float f;
    if (m->scale_dtype == ST_BF16) {
        p = m->scale + 2 * k;
        bits = ((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16;
    } else {
        p = m->scale + 4 * k;
        bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
               (uint32_t)p[3] << 24;
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

#if defined(__AVX2__) && defined(__F16C__)
#define FP8_SIMD 16
/* Sixteen codes as float32 values / 256, without the table (a gather per
 * element): E4M3's exponent and mantissa shifted up by 7 are a float16
 * with bias 15 instead of 7, i.e. the value / 2^8, subnormals included
 * (they are float16 subnormals, which the conversion handles exactly);
 * 0x7F/0xFF become a float16 NaN. The 2^8 goes into the block's scale: a
 * power of two, so the products are rounded exactly as code x scale. */
static inline void e4m3x16(const uint8_t *p, __m256 *lo, __m256 *hi)
{
    __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)p));
    __m256i mag = _mm256_and_si256(c, _mm256_set1_epi16(0x7F));
    __m256i h = _mm256_or_si256(_mm256_slli_epi16(mag, 7),
                                _mm256_slli_epi16(_mm256_and_si256(c, _mm256_set1_epi16(0x80)), 8));
    __m256i nan = _mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7F));
    h = _mm256_blendv_epi8(h, _mm256_set1_epi16(0x7E00), nan);
    *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}
#endif

void qm_fp8_row(const qm_fp8_mat *m, int64_t r, float *out)
{
    const float *tab = qm_e4m3_table();
    const uint8_t *q = m->codes + r * m->cols;
    int64_t bi = r / m->block_rows;
    for (int64_t c0 = 0, j = 0; c0 < m->cols; c0 += m->block_cols, j++) {
        float s = qm_fp8_scale(m, bi, j);
        int64_t c1 = MIN(c0 + m->block_cols, m->cols), c = c0;
#ifdef FP8_SIMD
        __m256 s256 = _mm256_set1_ps(s * 256.0f);
        for (; c + FP8_SIMD <= c1; c += FP8_SIMD) {
            __m256 lo, hi;
            e4m3x16(q + c, &lo, &hi);
            _mm256_storeu_ps(out + c, _mm256_mul_ps(lo, s256));
            _mm256_storeu_ps(out + c + 8, _mm256_mul_ps(hi, s256));
        }
#endif
        for (; c < c1; c++)
            out[c] = tab[q[c]] * s;
    }
}

float qm_fp8_dot(const qm_fp8_mat *m, int64_t r, const float *x)
{
    const float *tab = qm_e4m3_table();
    const uint8_t *q = m->codes + r * m->cols;
    int64_t bi = r / m->block_rows;
    float acc = 0;
    for (int64_t c0 = 0, j = 0; c0 < m->cols; c0 += m->block_cols, j++) {
        int64_t c1 = MIN(c0 + m->block_cols, m->cols), c = c0;
        float part = 0;  /* the block's sum, scaled once */
#ifdef FP8_SIMD
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (; c + FP8_SIMD <= c1; c += FP8_SIMD) {
            __m256 lo, hi;
            e4m3x16(q + c, &lo, &hi);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(lo, _mm256_loadu_ps(x + c)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(hi, _mm256_loadu_ps(x + c + 8)));
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, _mm256_add_ps(a0, a1));
        for (int k = 0; k < 8; k++)
            part += lanes[k];
        part *= 256.0f;  /* the lanes held value / 2^8 */
#endif
        for (; c < c1; c++)
            part += tab[q[c]] * x[c];
        acc += part * qm_fp8_scale(m, bi, j);
    }
    return acc;
}
