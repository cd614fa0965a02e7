/* OpenMP queries shared by every kernel extension; serial stubs when built without -fopenmp. */
#ifndef QCORE_OMP_H
#define QCORE_OMP_H
#ifdef _OPENMP
#include <omp.h>
static inline int qcore_omp_max_threads(void) { return omp_get_max_threads(); }
static inline int qcore_have_openmp(void) { return 1; }
#else
static inline int qcore_omp_max_threads(void) { return 1; }
static inline int qcore_have_openmp(void) { return 0; }
#endif
#endif
