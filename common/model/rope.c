/* rope.c - RoPE frequencies and cos/sin tables (see rope.h for the formulas). */
#include "model/rope.h"

#include <math.h>
#include <string.h>

#include "base/util.h"

static const cJSON *member(const cJSON *o, const char *key)
{
    const cJSON *j = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return j && !cJSON_IsNull(j) ? j : NULL;
}

/* An optional number of `src` (named `where` in messages) into *v. With
 * zero_is_absent, 0 keeps the default: transformers reads beta_fast and
 * beta_slow with `or`, and tests mscale's truth. Returns 1 when present. */
static int num(const cJSON *src, const char *where, const char *key, const char *path,
               int zero_is_absent, double *v, GError **err)
{
    const cJSON *j = member(src, key);
    if (!j)
        return 0;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s.%s is not a number", path,
                    where, key);
        return -1;
    }
    if (zero_is_absent && j->valuedouble == 0)
        return 0;
    *v = j->valuedouble;
    return 1;
}

static int bad_value(const char *path, const char *where, const char *key, double v,
                     const char *rule, GError **err)
{
    g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s.%s %g %s", path, where, key, v, rule);
    return -1;
}

/* rope_type ("type" in DeepSeek's v4 configs) of a rope object, or "default". */
static int rope_type(const cJSON *o, const char *where, const char *path, const char **out,
                     GError **err)
{
    *out = "default";
    if (!o)
        return 0;
    const cJSON *t = member(o, "rope_type");
    const char *key = "rope_type";
    if (!t) {
        t = member(o, "type");
        key = "type";
    }
    if (!t)
        return 0;
    if (!cJSON_IsString(t)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s.%s is not a string", path,
                    where, key);
        return -1;
    }
    *out = t->valuestring;
    if (!strcmp(*out, "mrope"))
        *out = "default";  /* some v4 configs' name for default-typed M-RoPE */
    if (strcmp(*out, "default") && strcmp(*out, "yarn")) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': %s.%s '%s' is not supported (qmoe implements default RoPE and "
                    "yarn)", path, where, key, t->valuestring);
        return -1;
    }
    return 0;
}

static double yarn_mscale(double s, double m)
{
    return s <= 1 ? 1.0 : 0.1 * m * log(s) + 1.0;
}

static double correction_dim(double rot, int dim, double theta, double orig)
{
    return dim * log(orig / (rot * 2 * G_PI)) / (2 * log(theta));
}

static int read_yarn(const cJSON *tc, const cJSON *src, const char *where, const char *path,
                     qm_rope *r, GError **err)
{
    int rc;
    double maxpos = 0;
    int have_max = num(tc, "config", "max_position_embeddings", path, 0, &maxpos, err);
    if (have_max < 0)
        return -1;
    r->original_max_pos = maxpos;
    if ((rc = num(src, where, "original_max_position_embeddings", path, 0,
                  &r->original_max_pos, err)) < 0)
        return -1;
    if (!rc && !have_max) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': %s has no original_max_position_embeddings and the config no "
                    "max_position_embeddings", path, where);
        return -1;
    }
    if (r->original_max_pos <= 0)
        return bad_value(path, where, "original_max_position_embeddings",
                         r->original_max_pos, "is not positive", err);
    if ((rc = num(src, where, "factor", path, 0, &r->factor, err)) < 0)
        return -1;
    if (!rc) {
        if (!have_max) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s has no factor", path, where);
            return -1;
        }
        r->factor = maxpos / r->original_max_pos;
    }
    if (r->factor < 1)
        return bad_value(path, where, "factor", r->factor, "is below 1", err);
    r->beta_fast = 32;
    r->beta_slow = 1;
    if (num(src, where, "beta_fast", path, 1, &r->beta_fast, err) < 0 ||
        num(src, where, "beta_slow", path, 1, &r->beta_slow, err) < 0 ||
        num(src, where, "mscale", path, 1, &r->mscale, err) < 0 ||
        num(src, where, "mscale_all_dim", path, 1, &r->mscale_all_dim, err) < 0)
        return -1;
    if (r->beta_slow <= 0 || r->beta_fast <= r->beta_slow) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': %s.beta_fast %g and beta_slow %g: need beta_fast > beta_slow > 0",
                    path, where, r->beta_fast, r->beta_slow);
        return -1;
    }
    if (r->mscale < 0)
        return bad_value(path, where, "mscale", r->mscale, "is negative", err);
    if (r->mscale_all_dim < 0)
        return bad_value(path, where, "mscale_all_dim", r->mscale_all_dim, "is negative", err);
    r->truncate = 1;
    const cJSON *tr = member(src, "truncate");
    if (tr && !cJSON_IsBool(tr)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s.truncate is not true or false",
                    path, where);
        return -1;
    }
    if (tr)
        r->truncate = cJSON_IsTrue(tr);
    if ((rc = num(src, where, "attention_factor", path, 0, &r->attention_factor, err)) < 0)
        return -1;
    if (rc && r->attention_factor <= 0)
        return bad_value(path, where, "attention_factor", r->attention_factor,
                         "is not positive", err);
    if (!rc)
        r->attention_factor = r->mscale > 0 && r->mscale_all_dim > 0
                                  ? yarn_mscale(r->factor, r->mscale) /
                                        yarn_mscale(r->factor, r->mscale_all_dim)
                                  : yarn_mscale(r->factor, 1.0);
    const cJSON *mt = member(tc, "model_type");
    if (mt && cJSON_IsString(mt) && g_str_has_prefix(mt->valuestring, "deepseek") &&
        r->mscale_all_dim > 0) {
        double m = yarn_mscale(r->factor, r->mscale_all_dim);
        r->softmax_mult = m * m;
    }

    double lo = correction_dim(r->beta_fast, r->dim, r->theta, r->original_max_pos);
    double hi = correction_dim(r->beta_slow, r->dim, r->theta, r->original_max_pos);
    if (r->truncate) {
        lo = floor(lo);
        hi = ceil(hi);
    }
    r->low = MAX(lo, 0.0);
    r->high = MIN(hi, (double)(r->dim - 1));
    if (r->low == r->high)
        r->high += 0.001;  /* a range of one point: a step, not a division by zero */
    for (int i = 0; i < r->dim / 2; i++) {
        double ramp = ((double)i - r->low) / (r->high - r->low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        r->inv_freq[i] *= (1 - ramp) + ramp / r->factor;
    }
    return 0;
}

static int read_theta(const cJSON *tc, const cJSON *p5, const char *path, double *theta,
                      GError **err)
{
    double t4 = 0, t5 = 0;
    int h4 = num(tc, "config", "rope_theta", path, 0, &t4, err);
    int h5 = h4 < 0 ? -1 : num(p5, "rope_parameters", "rope_theta", path, 0, &t5, err);
    if (h4 < 0 || h5 < 0)
        return -1;
    if (h4 && h5 && t4 != t5) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': rope_theta %g and rope_parameters.rope_theta %g disagree", path,
                    t4, t5);
        return -1;
    }
    *theta = h5 ? t5 : h4 ? t4 : 10000.0;
    if (*theta <= 1)
        return bad_value(path, h5 ? "rope_parameters" : "config", "rope_theta", *theta,
                         "is not above 1", err);
    return 0;
}

qm_rope *qm_rope_from_config(const cJSON *tc, const char *path, int dim, int partial,
                             GError **err)
{
    const cJSON *p4 = member(tc, "rope_scaling"), *p5 = member(tc, "rope_parameters");
    if ((p4 && !cJSON_IsObject(p4)) || (p5 && !cJSON_IsObject(p5))) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s is not an object", path,
                    p5 && !cJSON_IsObject(p5) ? "rope_parameters" : "rope_scaling");
        return NULL;
    }
    if (p5) {
        const cJSON *c;
        cJSON_ArrayForEach(c, p5) {
            if (cJSON_IsObject(c)) {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                            "'%s': rope_parameters.%s: per-layer-type RoPE parameters are "
                            "not supported", path, c->string);
                return NULL;
            }
        }
    }
    const char *t4, *t5;
    if (rope_type(p4, "rope_scaling", path, &t4, err) ||
        rope_type(p5, "rope_parameters", path, &t5, err))
        return NULL;
    if (p4 && p5 && strcmp(t4, t5)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': rope_scaling says '%s' and rope_parameters '%s'", path, t4, t5);
        return NULL;
    }
    const cJSON *src = p5 ? p5 : p4;
    const char *where = p5 ? "rope_parameters" : "rope_scaling";
    double prf = 1;
    if (num(src, where, "partial_rotary_factor", path, 0, &prf, err) < 0 ||
        num(tc, "config", "partial_rotary_factor", path, 0, &prf, err) < 0)
        return NULL;
    if (partial && !(prf > 0 && prf <= 1)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': partial_rotary_factor %g is not in (0, 1]", path, prf);
        return NULL;
    }
    if (!partial && prf != 1) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': partial_rotary_factor %g is not supported", path, prf);
        return NULL;
    }
    if (partial) /* as transformers sizes it: int(head_dim * factor) */
        dim = (int)((double)dim * prf);
    if (dim < 2 || dim > 65536 || dim % 2) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': %d rotated dims per head (RoPE needs an even number in 2..65536)",
                    path, dim);
        return NULL;
    }
    qm_rope *r = g_new0(qm_rope, 1);
    r->dim = dim;
    r->factor = 1;
    r->attention_factor = 1;
    r->softmax_mult = 1;
    r->inv_freq = g_new(double, dim / 2);
    if (read_theta(tc, p5, path, &r->theta, err))
        goto fail;
    for (int i = 0; i < dim / 2; i++)
        r->inv_freq[i] = 1.0 / pow(r->theta, (double)(2 * i) / dim);
    if (!strcmp(p5 ? t5 : t4, "yarn")) {
        r->type = QM_ROPE_YARN;
        if (read_yarn(tc, src, where, path, r, err))
            goto fail;
    }
    return r;
fail:
    qm_rope_free(r);
    return NULL;
}

void qm_rope_free(qm_rope *r)
{
    if (!r)
        return;
    g_free(r->inv_freq);
    g_free(r);
}

void qm_rope_at(const qm_rope *r, int64_t pos, float *cos_out, float *sin_out)
{
    /* double angles: in float32 pos * inv_freq loses 1e-3 rad by position 32768 */
    for (int i = 0; i < r->dim / 2; i++) {
        double a = (double)pos * r->inv_freq[i];
        cos_out[i] = (float)(cos(a) * r->attention_factor);
        sin_out[i] = (float)(sin(a) * r->attention_factor);
    }
}

void qm_rope_tables(const qm_rope *r, int n_pos, float *cos_out, float *sin_out)
{
    size_t h = (size_t)r->dim / 2;
    for (int p = 0; p < n_pos; p++)
        qm_rope_at(r, p, cos_out + (size_t)p * h, sin_out + (size_t)p * h);
}
