/* fp8dot.c - the FP8 row kernel alone: one thread, a [rows, cols] E4M3
 * matrix with F32 scales in 128 x 128 blocks (default 7168 x 2048, 14 MB:
 * a DeepSeek-V3 expert's down_proj, out of cache) times one vector with
 * qm_fp8_dot, against memcpy of the same bytes. Prints both bandwidths
 * (best of trials) and their ratio; checks the dot products against
 * qm_fp8_row's dequantised rows dotted in double.
 *
 *   fp8dot [rows cols trials]
 *
 * Built by hand (not part of make bench): cc -O2 -march=native -Icommon
 * $(pkg-config --cflags glib-2.0 libcjson) tests/bench/fp8dot.c
 * build/libqmoe.a $(pkg-config --libs glib-2.0 libcjson libcrypto zlib) -lm
 */
#include "format/fp8.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    int64_t rows = argc > 1 ? atoll(argv[1]) : 7168, cols = argc > 2 ? atoll(argv[2]) : 2048;
    int trials = argc > 3 ? atoi(argv[3]) : 5;
    if (rows < 1 || cols < 1 || trials < 1) {
        fprintf(stderr, "usage: fp8dot [rows cols trials]\n");
        return 2;
    }
    const int B = 128;
    int64_t gr = (rows + B - 1) / B, gc = (cols + B - 1) / B;
    size_t n = (size_t)rows * cols;
    uint8_t *codes = g_malloc(n), *copy = g_malloc(n);
    float *scale = g_new(float, gr * gc), *x = g_new(float, cols), *y = g_new(float, rows);
    uint64_t s = 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        codes[i] = (uint8_t)(s >> 56);
        if ((codes[i] & 0x7F) == 0x7F)
            codes[i] ^= 1;  /* no NaN */
    }
    for (int64_t i = 0; i < gr * gc; i++)
        scale[i] = ldexpf(1.0f + (float)(i % 7) / 8, -8 - (int)(i % 3));
    for (int64_t i = 0; i < cols; i++)
        x[i] = sinf((float)i * 0.01f);
    qm_fp8_mat m = {.codes = codes, .scale = (const uint8_t *)scale, .scale_dtype = ST_F32,
                    .rows = rows, .cols = cols, .block_rows = B, .block_cols = B};
    double best_dot = 1e30, best_cpy = 1e30;
    for (int t = 0; t < trials; t++) {
        double t0 = qm_monotonic();
        for (int64_t r = 0; r < rows; r++)
            y[r] = qm_fp8_dot(&m, r, x);
        double t1 = qm_monotonic();
        memcpy(copy, codes, n);
        double t2 = qm_monotonic();
        best_dot = MIN(best_dot, t1 - t0);
        best_cpy = MIN(best_cpy, t2 - t1);
    }
    float *row = g_new(float, cols);
    double worst = 0;
    for (int64_t r = 0; r < rows; r += 97) {
        qm_fp8_row(&m, r, row);
        double d = 0, mag = 0;
        for (int64_t c = 0; c < cols; c++) {
            d += (double)row[c] * x[c];
            mag += fabs((double)row[c] * x[c]);
        }
        worst = MAX(worst, fabs(y[r] - d) / MAX(mag, 1e-30));
    }
    printf("fp8 dot %lld x %lld: %.2f GB/s of weights; memcpy %.2f GB/s; ratio %.2f; "
           "worst relative error %.2g\n", (long long)rows, (long long)cols,
           n / best_dot / 1e9, n / best_cpy / 1e9, best_cpy / best_dot, worst);
    g_free(codes);
    g_free(copy);
    g_free(scale);
    g_free(x);
    g_free(y);
    g_free(row);
    return worst < 1e-5 ? 0 : 1;
}
