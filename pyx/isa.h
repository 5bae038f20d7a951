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
static int cnncli_pick_isa(int wanted)
{
    (void)wanted;
    return 0;
}
#endif

#endif
