/* kernels.c - the bf16 matrix products alone: one thread, a [rows, cols]
 * bf16 matrix (default 2048 x 2048, 8 MB: out of L2) times a batch of
 * tokens, as n_tok matrix-vector products (qm_matvec_rows, decode) and as
 * one matrix-matrix product (qm_matmat_rows, prefill). Prints GFLOP/s of
 * each (best of trials) and their ratio, and checks the outputs agree
 * bit for bit.
 *
 *   kernels [rows cols n_tok trials]
 *   kernels --stream MB THREADS TRIALS [bf16|fp8]   decode's bandwidth
 */
#include "model/matvec.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The single-thread products are timed in this thread's CPU time: on a
 * shared machine, time spent descheduled is not the kernel's. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t out[64];
} read_job;

static void read_part(void *arg, int i, int n)
{
    read_job *j = arg;
    size_t lo = j->n * i / n, hi = j->n * (i + 1) / n;
    uint64_t a[8] = {0};
    for (size_t k = lo; k + 8 <= hi; k += 8)
        for (int l = 0; l < 8; l++)
            a[l] ^= j->p[k + l];
    j->out[i] = a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}

/* fp8: E4M3 codes with F32 scales in 128 x 128 blocks, as DeepSeek-V3
 * ships them: decode reads half the bytes of bf16 for the same weights. */
static int stream(int mb, int threads, int trials, int fp8)
{
    size_t esz = fp8 ? 1 : 2;
    int cols = 2048, rows = (int)(((size_t)mb << 20) / (esz * cols));
    size_t n = (size_t)rows * cols;
    uint16_t *w = g_new(uint16_t, (n * esz + 1) / 2);
    uint8_t *codes = (uint8_t *)w;
    int gr = (rows + 127) / 128, gc = cols / 128;
    float *scale = g_new(float, (size_t)gr * gc);
    for (int k = 0; k < gr * gc; k++)
        scale[k] = 1.0f / 448 * (float)(1 + k % 3);
    for (size_t i = 0; i < n; i++) {
        if (fp8)
            codes[i] = (uint8_t)(0x30 + (i * 2654435761u >> 20) % 16 + (i & 1) * 0x80);
        else
            w[i] = (uint16_t)(0x3c00 + (i * 2654435761u >> 20) % 512); /* ~ +-1 */
    }
    float *x = g_new(float, cols), *o = g_new(float, rows);
    for (int c = 0; c < cols; c++)
        x[c] = (float)(c % 17) / 17.0f - 0.5f;
    GError *err = NULL;
    team *t = team_new(threads, &err);
    if (!t) {
        fprintf(stderr, "kernels: %s\n", err->message);
        return 2;
    }
    qm_mat m = {.data = (const uint8_t *)w, .dtype = ST_BF16, .rows = rows, .cols = cols};
    if (fp8)
        m = (qm_mat){.data = codes, .dtype = ST_F8_E4M3, .rows = rows, .cols = cols,
                     .scale = (const uint8_t *)scale, .scale_dtype = ST_F32,
                     .block_rows = 128, .block_cols = 128};
    read_job rj = {.p = (const uint64_t *)w, .n = n * esz / 8};
    double best_mv = 1e30, best_rd = 1e30;
    for (int r = 0; r < trials; r++) {
        double t0 = qm_monotonic();
        qm_matvec(t, o, &m, x);
        double t1 = qm_monotonic();
        team_run(t, read_part, &rj);
        double t2 = qm_monotonic();
        best_mv = t1 - t0 < best_mv ? t1 - t0 : best_mv;
        best_rd = t2 - t1 < best_rd ? t2 - t1 : best_rd;
    }
    double bytes = (double)esz * n;
    printf("%s %dx%d (%d MB) x 1 token, %d threads: matvec %.2f GB/s, read %.2f GB/s, "
           "matvec/read %.3f (%g)\n", fp8 ? "fp8" : "bf16", rows, cols, mb, threads,
           bytes / best_mv / 1e9, bytes / best_rd / 1e9, best_rd / best_mv,
           (double)o[rows / 2] + (double)(rj.out[0] & 1));
    team_free(t);
    g_free(w);
    g_free(scale);
    g_free(x);
    g_free(o);
    return 0;
}

#ifdef KERNELS_BLAS
#include <cblas.h>
/* out[t * rows + r] for every row: widen BLAS_ROWS rows, one sgemm each */
#define BLAS_ROWS 64
static void blas_product(float *out, const qm_mat *m, const float *x, int nt, float *buf)
{
    for (int r0 = 0; r0 < m->rows; r0 += BLAS_ROWS) {
        int nb = m->rows - r0 < BLAS_ROWS ? m->rows - r0 : BLAS_ROWS;
        for (int r = 0; r < nb; r++)
            qm_mat_row(m, r0 + r, buf + (size_t)r * m->cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nt, nb, m->cols, 1.0f, x, m->cols,
                    buf, m->cols, 0.0f, out + r0, m->rows);
    }
}
#endif

int main(int argc, char **argv)
{
    if ((argc == 5 || argc == 6) && !strcmp(argv[1], "--stream"))
        return stream(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]),
                      argc == 6 && !strcmp(argv[5], "fp8"));
    int rows = argc > 1 ? atoi(argv[1]) : 2048, cols = argc > 2 ? atoi(argv[2]) : 2048;
    int nt = argc > 3 ? atoi(argv[3]) : 64, trials = argc > 4 ? atoi(argv[4]) : 5;
    if (rows < 1 || cols < 1 || nt < 1 || trials < 1) {
        fprintf(stderr, "usage: kernels [rows cols n_tok trials]\n");
        return 2;
    }
    uint16_t *w = g_new(uint16_t, (size_t)rows * cols);
    float *x = g_new(float, (size_t)nt * cols);
    float *a = g_new(float, (size_t)nt * rows), *b = g_new(float, (size_t)nt * rows);
    uint64_t s = 1;
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float f = (float)((s >> 40) & 0xffff) / 65536.0f - 0.5f;
        uint32_t u;
        memcpy(&u, &f, 4);
        w[i] = (uint16_t)(u >> 16);
    }
    for (size_t i = 0; i < (size_t)nt * cols; i++)
        x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    qm_mat m = {.data = (const uint8_t *)w, .dtype = ST_BF16, .rows = rows, .cols = cols};
    double best_mv = 1e30, best_mm = 1e30;
    for (int r = 0; r < trials; r++) {
        double t0 = cpu_now();
        for (int t = 0; t < nt; t++)
            qm_matvec_rows(a + (size_t)t * rows, &m, x + (size_t)t * cols, 0, rows);
        double t1 = cpu_now();
        qm_matmat_rows(b, rows, &m, x, cols, nt, 0, rows);
        double t2 = cpu_now();
        best_mv = t1 - t0 < best_mv ? t1 - t0 : best_mv;
        best_mm = t2 - t1 < best_mm ? t2 - t1 : best_mm;
    }
    double flop = 2.0 * rows * cols * nt;
    int same = memcmp(a, b, sizeof(float) * (size_t)nt * rows) == 0;
#ifdef KERNELS_BLAS
    {
        float *c = g_new(float, (size_t)nt * rows), *buf = g_new(float, (size_t)BLAS_ROWS * cols);
        double best = 1e30, maxrel = 0;
        for (int r = 0; r < trials; r++) {
            double t0 = cpu_now();
            blas_product(c, &m, x, nt, buf);
            double t1 = cpu_now();
            best = t1 - t0 < best ? t1 - t0 : best;
        }
        for (size_t i = 0; i < (size_t)nt * rows; i++) {
            double d = fabs((double)c[i] - a[i]) / (fabs(a[i]) + 1e-3);
            maxrel = d > maxrel ? d : maxrel;
        }
        printf("bf16 %dx%d x %d tokens, 1 thread: OpenBLAS sgemm (weights widened per %d rows) "
               "%.2f GFLOP/s, matmat/sgemm %.2f, outputs %s (largest relative difference %.2g)\n",
               rows, cols, nt, BLAS_ROWS, flop / best / 1e9, best / best_mm,
               memcmp(a, c, sizeof(float) * (size_t)nt * rows) ? "DIFFER from matvec" : "identical",
               maxrel);
        g_free(c);
        g_free(buf);
    }
#endif
    printf("bf16 %dx%d x %d tokens, 1 thread: matvec %.2f GFLOP/s, matmat %.2f GFLOP/s, "
           "matmat/matvec %.2f, outputs %s\n", rows, cols, nt, flop / best_mv / 1e9,
           flop / best_mm / 1e9, best_mv / best_mm, same ? "identical" : "DIFFER");
    g_free(w);
    g_free(x);
    g_free(a);
    g_free(b);
    return same ? 0 : 1;
}
