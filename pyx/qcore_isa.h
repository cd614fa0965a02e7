/* Instruction-set levels shared by every kernel extension.  The build is baseline x86-64; hot loops carry
 * extra copies compiled with __attribute__((target(...))) for higher levels, and each extension runs the best
 * copy not above the level qcore/isa.py sets (QCORE_ISA caps it; see qcore_isa.pxd).
 *
 * A level includes every level below it.  A copy compiled for a level may use only the features that level
 * lists in qc_cpu_level() (QCORE_TARGET_* spells them for target attributes). */
#ifndef QCORE_ISA_H
#define QCORE_ISA_H

#if defined(__GNUC__)
#define QC_INLINE static inline __attribute__((always_inline))
#else
#define QC_INLINE static inline
#endif

/* QC_X86_CPUID: the CPU can be asked (gcc and clang on x86); QC_X86_DISPATCH: the always_inline-body copies of
 * quant/codebook/hist are built (gcc only: they rely on gcc's inlining of target-less bodies into targets) */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define QC_X86_CPUID 1
#else
#define QC_X86_CPUID 0
#endif
#if QC_X86_CPUID && !defined(__clang__)
#define QC_X86_DISPATCH 1
#else
#define QC_X86_DISPATCH 0
#endif

/* the levels, lowest first; the names are qcore/isa.py's ISA_NAMES in the same order */
enum {
    QCORE_ISA_BASELINE = 0,   /* x86-64 (SSE2), or any other architecture */
    QCORE_ISA_AVX2 = 1,       /* AVX2, FMA, F16C */
    QCORE_ISA_AVX512 = 2,     /* + AVX-512 F, BW, VL, DQ */
    QCORE_ISA_AVX512VNNI = 3, /* + AVX-512 VNNI */
};

#define QCORE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QCORE_TARGET_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
#define QCORE_TARGET_AVX512VNNI \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

/* the best level this CPU runs */
static inline int qc_cpu_level(void)
{
#if QC_X86_CPUID
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
        return QCORE_ISA_BASELINE;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")))
        return QCORE_ISA_AVX2;
    if (!__builtin_cpu_supports("avx512vnni"))
        return QCORE_ISA_AVX512;
    return QCORE_ISA_AVX512VNNI;
#else
    return QCORE_ISA_BASELINE;
#endif
}

#endif
