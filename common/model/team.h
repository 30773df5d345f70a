/* team.h - a fixed team of threads for data-parallel loops.
 *
 * The forward pass splits each matrix-vector product over output rows; a
 * token makes a few hundred such splits, so threads are started once and
 * woken per loop instead of being created per call (no allocation per
 * token). team_run calls fn(arg, i, n) once for every i in [0, n), with
 * i = 0 on the calling thread, and returns when all calls have returned.
 * One team is driven by one thread at a time.
 */
#ifndef QMOE_TEAM_H
#define QMOE_TEAM_H

#include <glib.h>

typedef struct team team;
typedef void (*team_fn)(void *arg, int i, int n);

/* Starts n - 1 worker threads (n >= 1; n = 1 runs everything inline).
 * Returns NULL with *err set when a thread cannot be started. */
team *team_new(int n, GError **err);

/* Stops and joins the workers; accepts NULL. */
void team_free(team *t);

/* Number of threads including the caller. */
int team_size(const team *t);

/* Runs fn(arg, i, n) for i in [0, n) in parallel and waits for all. */
void team_run(team *t, team_fn fn, void *arg);

#endif
