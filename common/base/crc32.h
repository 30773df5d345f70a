/* crc32.h - CRC-32 (the gzip/zlib polynomial) at memory speed.
 *
 * qm_crc32 gives exactly zlib's crc32_z(crc, buf, len) (start from 0,
 * chain calls), computed by carry-less multiplication (PCLMULQDQ) where
 * the CPU has it: about ten times zlib's table-driven speed, which made
 * CRC-32 a sixth of the extractor's CPU. Elsewhere, and for short
 * buffers, it is zlib's crc32_z itself.
 */
#ifndef QMOE_CRC32_H
#define QMOE_CRC32_H

#include <stddef.h>
#include <stdint.h>

uint32_t qm_crc32(uint32_t crc, const void *buf, size_t len);

/* The same, never the PCLMULQDQ path (for the unit test). */
uint32_t qm_crc32_plain(uint32_t crc, const void *buf, size_t len);

/* 1 if qm_crc32 uses PCLMULQDQ on this CPU. */
int qm_crc32_fast(void);

#endif
