/* verify.h - proving an extraction complete and intact.
 *
 * The checks behind qmoe-verify, as functions that fill a result instead of
 * printing, so that each tool (and later checks such as the coherence gate)
 * can run them and present the facts its own way:
 *
 *   vf_target_open    reads OUT: qmoe.json (or the journals of a running or
 *                     crashed job), config.json, the index, the job's lock
 *                     and temporaries; derives the expected set
 *   vf_check_coverage every expected file present, nothing unexpected,
 *                     manifest / config / index agree with each other
 *   vf_check_files    per file: strict header, size, names/dtypes/shapes
 *                     against the manifest and the config, SHA-256 (CRC-32
 *                     per tensor to locate damage), and with a source
 *                     attached, every tensor's bytes against the source
 *   vf_attach_source  plans the source checkpoint so that vf_check_files
 *                     compares bytes and coverage includes the source's
 *                     tensors (nothing of the source missing)
 *
 * A further check (the --coherence forward-pass gate) is one more
 * vf_check_*(vf_target *, options, vf_result *) that adds problems with its
 * own phase name; the tool runs it after vf_check_files.
 *
 * Checks never fail: what they find wrong becomes a vf_problem (a file
 * that cannot be read is a VF_IO problem). Only opening fails, NULL or -1
 * with *err set: OUT missing or unreadable, the source unreadable.
 */
#ifndef QMOE_VERIFY_H
#define QMOE_VERIFY_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>
#include <sys/types.h>

#include "format/checkpoint.h"
#include "format/layout.h"
#include "outdir/manifest.h"
#include "outdir/plan.h"

/* What kind of problem; names (vf_kind_name) appear in --json output. */
typedef enum {
    VF_MISSING,      /* an expected file is absent */
    VF_UNEXPECTED,   /* a file that no expectation names */
    VF_INCOMPLETE,   /* job running or unfinished, counts short */
    VF_MANIFEST,     /* qmoe.json / journal / index inconsistent or absent */
    VF_SIZE,         /* size differs from the manifest */
    VF_HEADER,       /* header does not parse, or disagrees with the manifest */
    VF_SHAPE,        /* names/dtypes/shapes do not fit the config */
    VF_HASH,         /* SHA-256 differs from the manifest */
    VF_DAMAGED,      /* a tensor's CRC-32 differs: that tensor is damaged */
    VF_SOURCE,       /* bytes or metadata differ from the source checkpoint */
    VF_IO,           /* a file could not be read */
    VF_COHERENCE,    /* the forward-pass gate failed (coherence.h) */
    VF_KIND_COUNT
} vf_kind;

const char *vf_kind_name(vf_kind k);

typedef struct {
    vf_kind kind;
    char *phase;     /* "coverage", "header", "shape", "hash", "source" */
    char *file;      /* relative to OUT, or NULL */
    char *tensor;    /* or NULL */
    int64_t offset;  /* byte offset in the file, or -1 */
    char *message;   /* lowercase, no file/tensor prefix */
} vf_problem;

/* Missing experts of one layer, for compact listing ("12-15,40"). */
typedef struct {
    int layer;
    int n_missing;
    char *experts;   /* qm_list_format of the missing experts */
} vf_missing_layer;

typedef struct {
    /* coverage */
    int experts_expected, experts_present;
    int layers_expected, layers_complete;   /* MoE layers in the expected set */
    /* of the above, the MTP block's (layout.h: counted apart, and said so) */
    int mtp_experts_expected, mtp_experts_present;
    int mtp_layers_expected, mtp_layers_complete;
    int others_expected, others_present;    /* non-expert files */
    int expect_override;                    /* --expect given */
    GArray *missing_layers;                 /* vf_missing_layer */
    /* the job */
    int running;                            /* a live extractor holds OUT */
    pid_t pid;                              /* its pid (or the dead one's) */
    char *job_state;                        /* progress.json state, or NULL */
    char *job_error;                        /* progress.json last_error */
    int from_journal;                       /* qmoe.json absent: journal used */
    /* integrity */
    int files_checked;
    uint64_t bytes_read;
    int hashed;                             /* data was read (not --quick) */
    int source_checked;                     /* bytes compared with a source */
    int source_tensors;                     /* source tensors compared */
    double seconds;
    GPtrArray *problems;                    /* vf_problem* in report order */
    GPtrArray *notes;                       /* char*: facts that are not errors */
} vf_result;

vf_result *vf_result_new(void);
void vf_result_free(vf_result *r);

/* Adds a problem (strings copied; file/tensor may be NULL, offset -1). */
void vf_add(vf_result *r, vf_kind kind, const char *phase, const char *file,
            const char *tensor, int64_t offset, const char *fmt, ...)
    G_GNUC_PRINTF(7, 8);

/* 0 when nothing is wrong and the job is not running. */
int vf_failed(const vf_result *r);

/* Exit status for the result: 0 all good, 2 when a file could not be read
 * (VF_IO: the verdict is unknown, not negative), else 1. */
int vf_exit_code(const vf_result *r);

/* The result as JSON (caller cJSON_Delete()s). */
cJSON *vf_result_to_json(const vf_result *r, const char *out);

/* One expected or present file. */
typedef struct {
    char *path;            /* relative to OUT */
    mf_kind kind;
    int layer, expert;     /* -1 where not applicable */
    const mf_file *rec;    /* manifest/journal record, or NULL */
    const plan_file *src;  /* the source's plan for this file, or NULL */
    const struct od_file_s *of; /* the view's file (outdir/view.h) */
    int expected;          /* in the expected set (the view's) */
    int present;           /* a regular file under its final name */
} vf_file;

typedef struct {
    char *out;
    manifest *m;           /* qmoe.json, or built from the journals */
    int have_manifest;     /* qmoe.json was read */
    struct od_view_s *view;/* OUT read once (outdir/view.h): coverage */
    const layout *lt;      /* or NULL when it cannot be told */
    lt_shape shape;        /* from OUT/config.json, else from the manifest: for
                            * the shape checks (coverage uses the view's) */
    int have_config;
    int width_e, width_l;  /* zero padding of expert file names */
    int expect;            /* --expect count, or -1 */
    uint8_t *layer_sel;    /* the view's: [n_layers] MoE layers expected */
    uint8_t *expert_sel;   /* the view's: [n_experts] experts expected */
    cJSON *index;          /* model.safetensors.index.json or NULL */
    GPtrArray *files;      /* vf_file*, sorted by path */
    GHashTable *by_path;   /* path -> vf_file* */
    ckpt *src;             /* attached source, or NULL */
    plan *src_plan;
    int src_partial;       /* the extraction is partial: no source-missing */
    int files_only;        /* no job record and no qmoe.json: names only */
    int gate_next;         /* the coherence gate runs after vf_check_files:
                            * it reads the files from the last layer to
                            * the first, so that the gate's first files
                            * are the ones still in the page cache */
} vf_target;

/* Opens OUT for verification. Problems found while reading (a damaged
 * qmoe.json, a missing config.json) go into r. Fails (QM_ERR_IO) only when
 * OUT is missing or unreadable or holds no extraction at all. `expect` is
 * the --expect count or -1. */
vf_target *vf_target_open(const char *out, int expect, vf_result *r, GError **err);
void vf_target_close(vf_target *t);

/* Plans the source checkpoint SRC (layout from the manifest, else
 * detected) and attaches it: coverage then also wants every source file of
 * a full extraction, and vf_check_files compares bytes. Fails when SRC
 * cannot be opened or planned. */
int vf_attach_source(vf_target *t, const char *src, vf_result *r, GError **err);

/* Coverage: fills the counts and missing lists, adds MISSING, UNEXPECTED,
 * INCOMPLETE and MANIFEST problems. */
void vf_check_coverage(vf_target *t, vf_result *r);

/* Per-file checks on every present file, `jobs` threads. quick: sizes and
 * headers only, no data read. */
void vf_check_files(vf_target *t, int quick, int jobs, vf_result *r);

/* How far vf_check_files has read (hashing, and comparing with the source):
 * bytes and files done and in all; final is 1 on the last call (done ==
 * total). Called on the caller's thread. */
typedef void (*vf_progress_fn)(void *user, uint64_t done, uint64_t total,
                               int files_done, int files, int final);
/* vf_check_files calling `report` about every 0.05 s while the workers
 * read and once when they are done; never when nothing is read (quick). */
void vf_check_files_progress(vf_target *t, int quick, int jobs, vf_result *r,
                             vf_progress_fn report, void *user);

/* FP8 (format/fp8.h): opens OUT as a checkpoint and checks that every
 * F8_E4M3 weight has a `_scale_inv` of its quantization_config block grid
 * in F32 or BF16 (VF_SHAPE problems, phase "fp8"); a quantization_config
 * it cannot read is a problem too. Headers only. For an FP8 checkpoint a
 * note says how many weights were checked, or why none could be; an OUT
 * that cannot be opened is left to the coverage and file checks. */
void vf_check_fp8(vf_target *t, vf_result *r);

/* Reads 8 MiB at a time: few syscalls, readahead kept streaming; one
 * buffer per thread. */
#define VF_READ_CHUNK (8u << 20)

#endif
