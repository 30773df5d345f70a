/* memory.h - how much memory this process may fill.
 *
 * The coherence gate's greedy steps each read the experts their tokens are
 * routed to: nearly free when the model's weights stay in the page cache,
 * a read of most of the model again when they do not. Whether they fit
 * is decided here, from the kernel's own accounting: MemAvailable in
 * /proc/meminfo (free memory plus the page cache it can reclaim) and the
 * limit of every memory cgroup the process is in (v2 memory.max, v1
 * memory.limit_in_bytes, from its own group up to the root), the smaller.
 */
#ifndef QMOE_MEMORY_H
#define QMOE_MEMORY_H

#include <stdint.h>

/* Bytes this process may hold in memory (page cache included), or 0 when
 * nothing could be read. Test hook: QMOE_TEST_MEMORY_BYTES=N makes it N. */
uint64_t qm_memory_available(void);

/* MemAvailable of a /proc/meminfo text, in bytes; 0 when absent. */
uint64_t qm_meminfo_available(const char *meminfo);

/* The smallest memory limit of the cgroups a /proc/self/cgroup text names,
 * with the cgroup filesystem mounted at `root` (/sys/fs/cgroup): v2's
 * memory.max or v1's memory/.../memory.limit_in_bytes in the process's
 * group and each parent. UINT64_MAX when none is set ("max", or v1's
 * page-rounded 2^63). */
uint64_t qm_cgroup_memory_limit(const char *root, const char *proc_cgroup);

#endif
