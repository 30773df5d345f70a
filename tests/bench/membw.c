/* membw.c - memcpy bandwidth with N threads, each copying its part of a
 * buffer far larger than the caches: the yardstick that the decode
 * benchmark's weight-streaming rate is compared with.
 *
 *   membw [THREADS [MB]]   prints bytes copied per second (best of 5)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    char *dst;
    const char *src;
    size_t n;
} part;

static void *copy(void *p)
{
    part *q = p;
    memcpy(q->dst, q->src, q->n);
    return NULL;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    int nt = argc > 1 ? atoi(argv[1]) : 1;
    size_t mb = argc > 2 ? (size_t)atoi(argv[2]) : 512;
    if (nt < 1 || nt > 256 || mb < 1) {
        fprintf(stderr, "usage: membw [THREADS [MB]]\n");
        return 2;
    }
    size_t n = mb << 20;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) {
        fprintf(stderr, "membw: out of memory\n");
        return 2;
    }
    memset(a, 1, n);
    memset(b, 2, n);
    double best = 0;
    pthread_t th[256];
    part parts[256];
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (int i = 0; i < nt; i++) {
            size_t lo = n * i / nt, hi = n * (i + 1) / nt;
            parts[i] = (part){b + lo, a + lo, hi - lo};
            pthread_create(&th[i], NULL, copy, &parts[i]);
        }
        for (int i = 0; i < nt; i++)
            pthread_join(th[i], NULL);
        double bw = n / (now() - t0);
        best = bw > best ? bw : best;
    }
    printf("%.0f\n", best);
    free(a);
    free(b);
    return 0;
}
