/* extract_copy.h - zero-copy extraction: output files that share the
 * source checkpoint's data blocks (reflinks) where the filesystem allows.
 *
 * On filesystems with shared extents (XFS made with reflink=1, btrfs),
 * FICLONERANGE makes a range of one file point at the blocks of another:
 * no data is read or written, and no disk space is used until either file
 * changes. It works only in whole blocks, at offsets that are multiples of
 * the block size in both files. A tensor inside a source shard starts at
 * an arbitrary offset, so an output file's header is padded (spaces, as
 * safetensors allows) so that its data starts at the same offset modulo
 * the block size as the source bytes: then every whole block of a tensor
 * can be shared, and only the partial blocks at its two ends are written.
 *
 * The extractor still reads every byte once (pread of the source) to
 * compute SHA-256 and CRC-32; only the writes are saved.
 *
 * The padding is used only when the probe says blocks can be shared, so
 * the plain path keeps the compact header. The same extraction onto
 * another filesystem therefore gives files with other bytes (a longer
 * header), equally valid: qmoe.json records each file's own size and
 * sha256, and the tensors are byte for byte the same.
 */
#ifndef QMOE_EXTRACT_COPY_H
#define QMOE_EXTRACT_COPY_H

#include <glib.h>
#include <stdint.h>

#include "base/fs.h"

/* Whether whole blocks of the open source `src_fd` can be shared with new
 * files created at `probe_path` (a scratch file, removed afterwards):
 * clones the first block of the source into it. Returns the block size
 * when they can, 0 when not (different filesystems, no reflink support,
 * a source shorter than a block, ...). */
uint64_t ec_probe(int src_fd, const char *probe_path);

/* The data phase (data start offset modulo bs) that lets most bytes of a
 * file be shared. The file's data is n stretches of source bytes (a tensor,
 * or tensors that follow one another in the source): stretch i sits at
 * src_off[i] in its source, has len[i] bytes and can be shared at all when
 * ok[i]; stretches follow one another from the data start in order. Returns 0 and sets
 * *use = 0 when no tensor gains (the plain, unpadded header), else the
 * phase with *use = 1. The phase is kept a multiple of 8 so that tensors
 * stay 8-byte aligned for readers that map them. */
uint64_t ec_phase(const uint64_t *src_off, const uint64_t *len, const int *ok,
                  int n, uint64_t bs, int *use);

/* Appends `len` bytes to `o`: the bytes are in `buf`, and also at
 * `src_off` in `src_fd`. With bs > 0 and *enabled, the whole blocks of the
 * range are cloned from the source when the output's position has the same
 * phase; the rest is written from buf. A clone the filesystem refuses
 * (EXDEV, EOPNOTSUPP, EINVAL, ...) is written from buf instead, and when
 * the refusal means "never here" *enabled is cleared (atomically) so that
 * other files do not try again. Adds the bytes shared to *shared.
 * Errors of the writes are reported as fs_out_write reports them. */
int ec_put(fs_out *o, int src_fd, uint64_t src_off, const uint8_t *buf, size_t len,
           uint64_t bs, gint *enabled, uint64_t *shared, GError **err);

#endif
