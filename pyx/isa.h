/* Which vector variant a kernel runs: the direct convolution's (microkernel.h) and
 * BatchNorm's float32 loops (planes.h) both choose theirs here, so one CPU test and one
 * setting (CNNCLI_DIRECT_ISA, read by isa.pxi) serve both.
 *
 * Variants: 0 none (the direct kernel off; BatchNorm's baseline build), 1 AVX2 + FMA,
 * 2 AVX-512. CNNCLI_AUTO takes the widest the CPU has; asking for a variant the CPU lacks
 * falls back to the next one down.
 */
#ifndef CNNCLI_ISA_H
#define CNNCLI_ISA_H

#define CNNCLI_AUTO (-1)

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <string.h>

/* Whether the CPU runs 512-bit multiply-adds at full rate, twice the work per cycle of
 * 256-bit ones: AMD's family 26 (Zen 5) and later, whose vector units are 512 bits wide.
 * Zen 4 splits each 512-bit operation in two; Intel's AVX-512 cores have one or two
 * 512-bit FMA units by model, which CPUID does not tell, so they count as not. */
static int cnncli_full_rate_512(void)
{
    unsigned int eax, ebx, ecx, edx, family;
    char vendor[13];
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx))
        return 0;
    memcpy(vendor, &ebx, 4);
    memcpy(vendor + 4, &edx, 4);
    memcpy(vendor + 8, &ecx, 4);
    vendor[12] = 0;
    if (strcmp(vendor, "AuthenticAMD") != 0 || !__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    family = (eax >> 8) & 0xf;
    if (family == 0xf)
        family += (eax >> 20) & 0xff;
    return family >= 26 && __builtin_cpu_supports("avx512f");
}

static int cnncli_pick_isa(int wanted)
{
    int avx2, avx512;
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    avx512 = avx2 && __builtin_cpu_supports("avx512f");
    if (wanted == CNNCLI_AUTO)
        return avx512 ? 2 : avx2 ? 1 : 0;
    if (wanted >= 2 && avx512)
        return 2;
    return wanted >= 1 && avx2 ? 1 : 0;
}
#else
static int cnncli_full_rate_512(void)
{
    return 0;
}

static int cnncli_pick_isa(int wanted)
{
    (void)wanted;
    return 0;
}
#endif

#endif
