/* fp8dot.c - decode's FP8 product alone: one thread, a [rows, cols] E4M3
 * matrix with F32 scales in 128 x 128 blocks (default 7168 x 2048, 14 MB:
 * a DeepSeek-V3 expert's down_proj, out of cache) times one vector through
 * qm_matvec_rows (the tile kernel decode runs), against memcpy of the
 * same bytes. Both are timed in this thread's CPU time (a shared machine
 * deschedules us; stalls on memory still count), trials interleaved, best
 * of each. Prints both rates and the fraction of memcpy's; checks every
 * output against qm_mat_row's dequantised row dotted in double.
 *
 *   fp8dot [rows cols trials]
 *
 * tests/bench/fp8dot.sh builds it against two versions of matvec.c and
 * runs them in one invocation.
 */
#include "model/matvec.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int rows = argc > 1 ? atoi(argv[1]) : 7168, cols = argc > 2 ? atoi(argv[2]) : 2048;
    int trials = argc > 3 ? atoi(argv[3]) : 9;
    if (rows < 1 || cols < 1 || trials < 1) {
        fprintf(stderr, "usage: fp8dot [rows cols trials]\n");
        return 2;
    }
    const int B = 128;
    int gr = (rows + B - 1) / B, gc = (cols + B - 1) / B;
    size_t n = (size_t)rows * cols;
    uint8_t *codes = g_malloc(n), *copy = g_malloc(n);
    float *scale = g_new(float, (size_t)gr * gc), *x = g_new(float, cols), *y = g_new(float, rows);
    uint64_t s = 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        codes[i] = (uint8_t)(s >> 56);
        if ((codes[i] & 0x7F) == 0x7F)
            codes[i] ^= 1; /* no NaN */
    }
    for (int i = 0; i < gr * gc; i++)
        scale[i] = ldexpf(1.0f + (float)(i % 7) / 8, -8 - i % 3);
    for (int i = 0; i < cols; i++)
        x[i] = sinf((float)i * 0.01f);
    memset(copy, 1, n);
    qm_mat m = {.data = codes, .dtype = ST_F8_E4M3, .rows = rows, .cols = cols,
                .scale = (const uint8_t *)scale, .scale_dtype = ST_F32,
                .block_rows = B, .block_cols = B};
    double best_mv = 1e30, best_cpy = 1e30;
    for (int t = 0; t < trials; t++) {
        double t0 = cpu_now();
        qm_matvec_rows(y, &m, x, 0, rows);
        double t1 = cpu_now();
        memcpy(copy, codes, n);
        double t2 = cpu_now();
        best_mv = MIN(best_mv, t1 - t0);
        best_cpy = MIN(best_cpy, t2 - t1);
    }
    float *row = g_new(float, cols);
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        qm_mat_row(&m, r, row);
        double d = 0, mag = 0;
        for (int c = 0; c < cols; c++) {
            d += (double)row[c] * x[c];
            mag += fabs((double)row[c] * x[c]);
        }
        worst = MAX(worst, fabs(y[r] - d) / MAX(mag, 1e-30));
    }
    printf("fp8 matvec %d x %d (%s): %.2f GB/s of weights; memcpy %.2f GB/s; "
           "fraction %.3f; worst relative error %.2g\n", rows, cols, qm_kernel_isa(),
           n / best_mv / 1e9, n / best_cpy / 1e9, best_cpy / best_mv, worst);
    g_free(codes);
    g_free(copy);
    g_free(scale);
    g_free(x);
    g_free(y);
    g_free(row);
    return worst < 1e-5 ? 0 : 1;
}
