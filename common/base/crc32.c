/* crc32.c - see crc32.h
 *
 * Folding (the method of Gopal et al., "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ", Intel 2009), bit-reflected as zlib's CRC
 * is: four 128-bit lanes run over the buffer 64 bytes at a time, each
 * lane multiplied forward by x^512 (mod P) and xored with the next 16
 * bytes. The lanes are then folded into one, which as a 16-byte message
 * has the same remainder as everything it replaced; zlib finishes that
 * message and the tail, so no Barrett reduction is needed here.
 */
#include "base/crc32.h"

#include <zlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* Folding constants, as the multiplier of each 64-bit half of a lane:
 * x^(d+32) and x^(d-32) mod P for a fold distance of d bits, reflected
 * and shifted left by one (the product of two reflected operands comes
 * out one bit low). d = 512: four lanes ahead; d = 128: one lane. */
#define K512_LO 0x154442bd4ull
#define K512_HI 0x1c6e41596ull
#define K128_LO 0x1751997d0ull
#define K128_HI 0x0ccaa009eull

__attribute__((target("pclmul,sse4.1")))
static inline __m128i fold(__m128i x, __m128i k, __m128i next)
{
    __m128i lo = _mm_clmulepi64_si128(x, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(x, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

__attribute__((target("pclmul,sse4.1")))
static uint32_t crc32_clmul(uint32_t crc, const uint8_t *p, size_t len)
{
    const __m128i *v = (const __m128i *)(const void *)p;
    /* zlib's register starts inverted; xoring it into the first four
     * bytes is the same as starting the register there */
    __m128i x0 = _mm_xor_si128(_mm_loadu_si128(v), _mm_cvtsi32_si128((int)~crc));
    __m128i x1 = _mm_loadu_si128(v + 1), x2 = _mm_loadu_si128(v + 2);
    __m128i x3 = _mm_loadu_si128(v + 3);
    v += 4;
    len -= 64;
    __m128i k = _mm_set_epi64x((long long)K512_HI, (long long)K512_LO);
    for (; len >= 64; len -= 64, v += 4) {
        x0 = fold(x0, k, _mm_loadu_si128(v));
        x1 = fold(x1, k, _mm_loadu_si128(v + 1));
        x2 = fold(x2, k, _mm_loadu_si128(v + 2));
        x3 = fold(x3, k, _mm_loadu_si128(v + 3));
    }
    k = _mm_set_epi64x((long long)K128_HI, (long long)K128_LO);
    __m128i x = fold(fold(fold(x0, k, x1), k, x2), k, x3);
    for (; len >= 16; len -= 16, v++)
        x = fold(x, k, _mm_loadu_si128(v));
    /* x, as a message read from a zero register, leaves what the whole
     * prefix left: zlib's crc32_z from ~0 is that register, inverted */
    uint8_t last[16];
    _mm_storeu_si128((__m128i *)(void *)last, x);
    uint32_t c = (uint32_t)crc32_z(0xffffffffUL, last, 16);
    return (uint32_t)crc32_z(c, (const uint8_t *)v, len);
}

int qm_crc32_fast(void)
{
    static int fast = -1;
    if (fast < 0)
        fast = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    return fast;
}

uint32_t qm_crc32(uint32_t crc, const void *buf, size_t len)
{
    if (len >= 256 && qm_crc32_fast())
        return crc32_clmul(crc, buf, len);
    return qm_crc32_plain(crc, buf, len);
}
#else
int qm_crc32_fast(void)
{
    return 0;
}

uint32_t qm_crc32(uint32_t crc, const void *buf, size_t len)
{
    return qm_crc32_plain(crc, buf, len);
}
#endif

uint32_t qm_crc32_plain(uint32_t crc, const void *buf, size_t len)
{
    return (uint32_t)crc32_z(crc, buf, len);
}
