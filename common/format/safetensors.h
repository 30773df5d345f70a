/* safetensors.h - strict reader and writer for the safetensors format.
 *
 * File layout: u64 little-endian N, N bytes of UTF-8 JSON header, data.
 * The header maps tensor names to {"dtype", "shape", "data_offsets":[b,e]}
 * (offsets relative to the start of data) plus an optional "__metadata__"
 * object of string values.
 *
 * The reader distrusts every number: N <= 100,000,000 and within the file,
 * known dtypes, non-negative shapes whose element count does not overflow,
 * offsets contiguous from 0 in sorted order with no gap or overlap, each
 * byte length equal to elements x dtype size, and 8 + N + last end equal to
 * the file size, JSON nested at most 64 deep (a valid header needs 3). Each
 * violation has its own message naming file and tensor.
 */
#ifndef QMOE_SAFETENSORS_H
#define QMOE_SAFETENSORS_H

#include <glib.h>
#include <stdint.h>

#define ST_MAX_HEADER 100000000ULL
#define ST_MAX_DIMS 8

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_I32, ST_U32, ST_I64, ST_U64,
    ST_F16, ST_BF16, ST_F32, ST_F64,
    ST_F8_E4M3, ST_F8_E5M2, ST_F8_E8M0, ST_F6_E2M3, ST_F6_E3M2, ST_F4,
    ST_DTYPE_COUNT
} st_dtype;

/* "BF16" etc. */
const char *st_dtype_name(st_dtype t);
/* Returns the dtype or -1 for an unknown name. */
int st_dtype_parse(const char *name);
/* Size of one element in bits (4 for F4, 6 for F6 kinds). */
unsigned st_dtype_bits(st_dtype t);

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets relative to the data section */
} st_tensor;

typedef struct {
    char *path;            /* label used in messages (the file's path) */
    const uint8_t *base;   /* whole file: header length, header, data */
    uint64_t size;         /* file size in bytes */
    uint64_t data_start;   /* 8 + N */
    int n_tensors;
    st_tensor *tensors;    /* in header order */
    GHashTable *by_name;   /* name -> st_tensor*, NULL for a file of few
                              tensors (st_find scans them) */
    char **meta_keys;      /* __metadata__, NULL-terminated, may be empty */
    char **meta_values;
    uint64_t dev;          /* st_dev of the file opened (st_open*), else 0 */
    /* private */
    void *map;
    uint64_t map_len;
} st_file;

/* Parses a complete file image. `bytes` is not copied and must outlive the
 * result; `label` names the file in errors. Returns NULL with *err set
 * (QM_ERR_FORMAT) on any violation. */
st_file *st_parse(const char *label, const uint8_t *bytes, uint64_t len,
                  GError **err);

/* Parses only the header: `hdr` holds the first 8 + N bytes (or more) of a
 * file whose total size is file_size. Tensor data is not accessible
 * (base == NULL). Used where the data is not mapped (--quick checks). */
st_file *st_parse_header(const char *label, const uint8_t *hdr, uint64_t hdr_len,
                         uint64_t file_size, GError **err);

/* Maps `path` read-only and parses it. */
st_file *st_open(const char *path, GError **err);

/* Reads just the header of `path` with pread (no mapping of the data). */
st_file *st_open_header(const char *path, GError **err);

/* st_open and st_open_header of NAME under a directory opened by
 * fs_dir_open (base/fs.h: a checkpoint of thousands of files walks and
 * lists its directory once; NULL opens `path`); `path` names the file in
 * messages and in st_file.path. */
struct fs_dir;
st_file *st_open_at(struct fs_dir *d, const char *name, const char *path, GError **err);
st_file *st_open_header_at(struct fs_dir *d, const char *name, const char *path,
                           GError **err);

/* A header described rather than read: the tensors a record kept
 * elsewhere (an OUT's qmoe.json) says a file of file_size bytes holds.
 * Every number is checked as st_parse_header checks a file's (known dtype,
 * dimensions, bytes = elements x dtype size, offsets tiling the data, no
 * duplicate name), and the header's length is what the data leaves of the
 * file. The names are copied; no metadata; base NULL, dev 0. Returns NULL
 * with *err set (QM_ERR_FORMAT) naming `label`. */
st_file *st_describe(const char *label, const st_tensor *t, int n, uint64_t file_size,
                     GError **err);

/* How the file read (`got`) differs from what was said of it (`want`,
 * st_describe), one clause naming `said` ("qmoe.json"): size, header
 * length, a tensor's dtype, shape or offsets, a tensor absent or extra.
 * Metadata is not compared. NULL when they agree; caller frees. */
char *st_header_diff(const st_file *want, const st_file *got, const char *said);

/* Frees and unmaps; accepts NULL. */
void st_close(st_file *f);

/* Tensor by name or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);

/* Start of a tensor's bytes within the mapping (NULL for header-only). */
const uint8_t *st_data(const st_file *f, const st_tensor *t);

/* Value of a __metadata__ key or NULL. */
const char *st_meta(const st_file *f, const char *key);

/* Number of elements (0 if any dimension is 0), or -1 if a dimension is
 * negative or the product overflows 2^62. */
int64_t st_numel(const int64_t *shape, int ndim);

/* "[32, 64]" into buf; returns buf. */
char *st_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap);

/* ---- writing ---- */

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes; /* must equal numel x dtype size */
} st_entry;

/* Builds the first bytes of a file holding `n` tensors laid out in the
 * given order: u64 length, JSON header, space padding. The header always
 * has __metadata__ with "format":"pt" followed by `meta` (NULL-terminated
 * key, value pairs; may be NULL). The data section starts at a multiple of
 * 8; with align > 8 (a power of two) padding is added so that the data
 * starts at offset `phase` modulo `align` (used to line up blocks with a
 * source file). Returns NULL with *err set if an entry is inconsistent
 * (bytes not numel x dtype size, more than ST_MAX_DIMS dimensions, a
 * duplicate name or the reserved name "__metadata__"). */
GByteArray *st_header_build(const st_entry *e, int n, const char *const *meta,
                            uint64_t align, uint64_t phase, GError **err);

/* Writes a whole file atomically (temporary, fsync, rename). data[i] holds
 * e[i].nbytes bytes. */
int st_write_file(const char *path, const st_entry *e, int n,
                  const void *const *data, const char *const *meta,
                  GError **err);

#endif
