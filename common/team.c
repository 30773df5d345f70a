/* team.c - see team.h */
#include "team.h"
#include "util.h"

#include <pthread.h>
#include <string.h>

struct team {
    int n;
    pthread_t *threads;   /* [n - 1] workers */
    pthread_mutex_t mu;
    pthread_cond_t wake;  /* workers wait here for a new generation */
    pthread_cond_t done;  /* the caller waits here for pending == 0 */
    unsigned long gen;    /* bumped by each team_run */
    int pending;          /* workers still running the current loop */
    int quit;
    team_fn fn;
    void *arg;
};

typedef struct {
    team *t;
    int i;
} worker_arg;

static void *worker(void *p)
{
    worker_arg wa = *(worker_arg *)p;
    g_free(p);
    team *t = wa.t;
    unsigned long seen = 0;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (t->gen == seen && !t->quit)
            pthread_cond_wait(&t->wake, &t->mu);
        if (t->quit)
            break;
        seen = t->gen;
        team_fn fn = t->fn;
        void *arg = t->arg;
        pthread_mutex_unlock(&t->mu);
        fn(arg, wa.i, t->n);
        pthread_mutex_lock(&t->mu);
        if (--t->pending == 0)
            pthread_cond_signal(&t->done);
    }
    pthread_mutex_unlock(&t->mu);
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

void team_free(team *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    t->quit = 1;
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
    pthread_mutex_lock(&t->mu);
    t->fn = fn;
    t->arg = arg;
    t->pending = t->n - 1;
    t->gen++;
    pthread_cond_broadcast(&t->wake);
    pthread_mutex_unlock(&t->mu);
    fn(arg, 0, t->n);
    pthread_mutex_lock(&t->mu);
    while (t->pending > 0)
        pthread_cond_wait(&t->done, &t->mu);
    pthread_mutex_unlock(&t->mu);
}
