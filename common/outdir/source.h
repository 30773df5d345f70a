/* source.h - the identity of OUT's source.
 *
 * .qmoe/source.json, written before the first output file, holds what the
 * extraction reads:
 *   {"id":"<16 hex>","path":"SRC","files":[{"name":"model-00001-of-00003.safetensors",
 *     "size":N,"mtime":1764197000.123,"header_sha256":"<64 hex>",
 *     "sample_sha256":"<64 hex>"}]}
 * sample_sha256 hashes the first and last 64 KiB of the data. "id" is a
 * digest of the names, sizes and hashes (not the mtimes); a rerun refuses
 * when any of it differs, mtimes included (changed in place). Every journal
 * record and qmoe.json carry the id, so that files from two sources in one
 * OUT are told apart.
 *
 * Only the shards the plan reads are fingerprinted ("files"); the others
 * are named in "unread":[NAME] or, when absent or a dangling symlink (a
 * download in progress), "missing":[{"name","why"}]. A rerun that reads
 * more of them (the download finished, a wider --layers) extends the
 * record under the same id (od_source_merge): the files already written
 * stay theirs, and a shard read by any run must still be what it was. */
#ifndef QMOE_OUTDIR_SOURCE_H
#define QMOE_OUTDIR_SOURCE_H

#include <cjson/cJSON.h>
#include <glib.h>

#include "format/checkpoint.h"

/* The identity of ck's shards as far as they were read (the plan loads
 * the headers it needs): each loaded shard's fingerprint in "files" (the
 * id hashes these), the others by name in "unread", or in "missing" with
 * why ({name, why}) when absent or a dangling symlink. A cJSON object as
 * in source.json above (caller deletes), or NULL with *err. */
cJSON *od_source_identity(const ckpt *ck, const char *src_path, GError **err);
/* "id" of an identity, or "" */
const char *od_source_id(const cJSON *identity);
/* The identity OUT keeps when `now` is the source `then` was taken from,
 * as far as either read it: then's id (OUT's files carry it), the shards
 * read by either (a shard unread or missing then may be read now: a
 * download that went on; one read then and not now keeps then's record),
 * now's unread and missing ones. NULL with *diff (one clause per
 * difference, as od_source_diff) when it is another source or this one
 * changed: a shard read both times differs, or the index lists other
 * shards. Caller deletes / frees. */
cJSON *od_source_merge(const cJSON *then, const cJSON *now, char **diff);
/* What differs between an earlier identity and the current one, one
 * clause per difference ("'model-00002-of-00003.safetensors': size 1200
 * then, 1300 now"), or NULL when they are the same source. Caller frees. */
char *od_source_diff(const cJSON *then, const cJSON *now);

/* Loads the headers of the shards an earlier identity (`then`)
 * fingerprinted that are present, so that od_source_identity fingerprints
 * them again and od_source_merge compares them: a shard changed since is
 * noticed even when this plan does not read it. One that is missing now is
 * left (the merge keeps then's record); another failure to read it is an
 * error. */
int od_source_reread(ckpt *ck, const cJSON *then, GError **err);

/* .qmoe/source.json of OUT, or NULL when absent; a damaged one is an error. */
cJSON *od_source_load(const char *out, GError **err);
int od_source_save(const char *out, const cJSON *identity, GError **err);

#endif
