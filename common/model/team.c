/* team.c - see team.h
 *
 * A loop of a token is short (a 1 MB expert matrix takes ~100 us), so a
 * condition-variable wake-up per loop would cost as much as the work:
 * workers poll the generation counter for a while before they sleep, and
 * the caller polls for the stragglers before it sleeps. Sleepers announce
 * themselves with an atomic before re-checking under the mutex, and the
 * other side checks that atomic after its own update (all sequentially
 * consistent), so either the sleeper sees the update or the updater sees
 * the sleeper and signals under the mutex: no lost wake-up.
 */
#include "model/team.h"
#include "base/util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

/* Polls before sleeping: long enough to bridge the gap between two loops
 * of a token, short enough not to starve other processes on a busy host. */
#define SPIN 4000

struct team {
    int n;
    pthread_t *threads;       /* [n - 1] workers */
    pthread_mutex_t mu;
    pthread_cond_t wake;      /* sleeping workers wait here */
    pthread_cond_t done;      /* a sleeping caller waits here */
    atomic_int caller_sleeps;
    atomic_ulong gen;         /* bumped by each team_run */
    atomic_int pending;       /* workers still running the current loop */
    atomic_int sleepers;
    atomic_int quit;
    team_fn fn;               /* published by the gen increment */
    void *arg;
};

typedef struct {
    team *t;
    int i;
} worker_arg;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker(void *p)
{
    worker_arg wa = *(worker_arg *)p;
    g_free(p);
    team *t = wa.t;
    unsigned long seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load(&t->gen) == seen && !atomic_load(&t->quit) && spins < SPIN) {
            cpu_relax();
            spins++;
        }
        if (atomic_load(&t->gen) == seen && !atomic_load(&t->quit)) {
            pthread_mutex_lock(&t->mu);
            atomic_fetch_add(&t->sleepers, 1);
            while (atomic_load(&t->gen) == seen && !atomic_load(&t->quit))
                pthread_cond_wait(&t->wake, &t->mu);
            atomic_fetch_sub(&t->sleepers, 1);
            pthread_mutex_unlock(&t->mu);
        }
        if (atomic_load(&t->quit))
            break;
        seen = atomic_load(&t->gen);
        t->fn(t->arg, wa.i, t->n);
        if (atomic_fetch_sub(&t->pending, 1) == 1 && atomic_load(&t->caller_sleeps)) {
            pthread_mutex_lock(&t->mu);
            pthread_cond_signal(&t->done);
            pthread_mutex_unlock(&t->mu);
        }
    }
    return NULL;
}

team *team_new(int n, GError **err)
{
    if (n < 1)
        n = 1;
    team *t = g_new0(team, 1);
    t->n = 1;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->wake, NULL);
    pthread_cond_init(&t->done, NULL);
    atomic_init(&t->caller_sleeps, 0);
    atomic_init(&t->gen, 0);
    atomic_init(&t->pending, 0);
    atomic_init(&t->sleepers, 0);
    atomic_init(&t->quit, 0);
    t->threads = g_new0(pthread_t, n);
    for (int i = 1; i < n; i++) {
        worker_arg *wa = g_new(worker_arg, 1);
        wa->t = t;
        wa->i = i;
        int rc = pthread_create(&t->threads[i - 1], NULL, worker, wa);
        if (rc != 0) {
            g_free(wa);
            g_set_error(err, QM_ERROR, QM_ERR_IO, "cannot start thread %d of %d: %s",
                        i + 1, n, strerror(rc));
            team_free(t);
            return NULL;
        }
        t->n = i + 1;
    }
    return t;
}

static void wake_sleepers(team *t)
{
    if (atomic_load(&t->sleepers) > 0) {
        pthread_mutex_lock(&t->mu);
        pthread_cond_broadcast(&t->wake);
        pthread_mutex_unlock(&t->mu);
    }
}

void team_free(team *t)
{
    if (!t)
        return;
    atomic_store(&t->quit, 1);
    pthread_mutex_lock(&t->mu);
    pthread_cond_broadcast(&t->wake);
    pthread_mutex_unlock(&t->mu);
    for (int i = 1; i < t->n; i++)
        pthread_join(t->threads[i - 1], NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->wake);
    pthread_cond_destroy(&t->done);
    g_free(t->threads);
    g_free(t);
}

int team_size(const team *t)
{
    return t->n;
}

void team_run(team *t, team_fn fn, void *arg)
{
    if (t->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    t->fn = fn;
    t->arg = arg;
    atomic_store(&t->pending, t->n - 1);
    atomic_fetch_add(&t->gen, 1);
    wake_sleepers(t);
    fn(arg, 0, t->n);
    for (int spins = 0; atomic_load(&t->pending) > 0 && spins < SPIN; spins++)
        cpu_relax();
    if (atomic_load(&t->pending) > 0) {
        pthread_mutex_lock(&t->mu);
        atomic_store(&t->caller_sleeps, 1);
        while (atomic_load(&t->pending) > 0)
            pthread_cond_wait(&t->done, &t->mu);
        atomic_store(&t->caller_sleeps, 0);
        pthread_mutex_unlock(&t->mu);
    }
}
