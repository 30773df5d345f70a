/* error.h - the error domain of libqmoe, part of its installed API.
 *
 * Every library function that fails fills a GError in the QM_ERROR domain
 * with one of these codes and a message naming the file and the problem.
 * (base/util.h, the library's internal helpers, includes this.)
 */
#ifndef QMOE_ERROR_H
#define QMOE_ERROR_H

#include <glib.h>

#define QM_ERROR qm_error_quark()
GQuark qm_error_quark(void);

typedef enum {
    QM_ERR_IO = 1,   /* cannot open/read/write a file (exit 2) */
    QM_ERR_FORMAT,   /* a file is malformed (exit 2) */
    QM_ERR_USAGE,    /* bad arguments (exit 2) */
    QM_ERR_NOSPACE,  /* disk full or file size limit (exit 2) */
    QM_ERR_LOCKED,   /* another process holds the output lock (exit 2) */
    QM_ERR_STOPPED,  /* interrupted by a signal (exit 1) */
    QM_ERR_CHECK,    /* a verification check failed (exit 1) */
} qm_err_code;

#endif
