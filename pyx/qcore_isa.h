/* Run-time instruction-set choice shared by the kernel extensions: the build is baseline x86-64, and
 * hot loops are compiled a second and third time with target("avx2") / target("avx512...") attributes,
 * one of which is picked at import from __builtin_cpu_supports (QCORE_ISA overrides, see qcore_isa.pxd). */
#ifndef QCORE_ISA_H
#define QCORE_ISA_H

#if defined(__GNUC__)
#define QC_INLINE static inline __attribute__((always_inline))
#else
#define QC_INLINE static inline
#endif

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define QC_X86_DISPATCH 1
#else
#define QC_X86_DISPATCH 0
#endif

/* 0 = baseline, 1 = avx2, 2 = avx512 (F, BW, VL): the best this CPU supports */
static int qc_cpu_level(void)
{
#if QC_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return 2;
    if (__builtin_cpu_supports("avx2"))
        return 1;
#endif
    return 0;
}

#endif
