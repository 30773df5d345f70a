/* kernels.c - the bf16 matrix products alone: one thread, a [rows, cols]
 * bf16 matrix (default 2048 x 2048, 8 MB: out of L2) times a batch of
 * tokens, as n_tok matrix-vector products (qm_matvec_rows, decode) and as
 * one matrix-matrix product (qm_matmat_rows, prefill). Prints GFLOP/s of
 * each (best of trials) and their ratio, and checks the outputs agree
 * bit for bit.
 *
 *   kernels [rows cols n_tok trials]
 */
#include "model/matvec.h"
#include "base/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
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
        double t0 = qm_monotonic();
        for (int t = 0; t < nt; t++)
            qm_matvec_rows(a + (size_t)t * rows, &m, x + (size_t)t * cols, 0, rows);
        double t1 = qm_monotonic();
        qm_matmat_rows(b, rows, &m, x, cols, nt, 0, rows);
        double t2 = qm_monotonic();
        best_mv = t1 - t0 < best_mv ? t1 - t0 : best_mv;
        best_mm = t2 - t1 < best_mm ? t2 - t1 : best_mm;
    }
    double flop = 2.0 * rows * cols * nt;
    int same = memcmp(a, b, sizeof(float) * (size_t)nt * rows) == 0;
    printf("bf16 %dx%d x %d tokens, 1 thread: matvec %.2f GFLOP/s, matmat %.2f GFLOP/s, "
           "matmat/matvec %.2f, outputs %s\n", rows, cols, nt, flop / best_mv / 1e9,
           flop / best_mm / 1e9, best_mv / best_mm, same ? "identical" : "DIFFER");
    g_free(w);
    g_free(x);
    g_free(a);
    g_free(b);
    return same ? 0 : 1;
}
