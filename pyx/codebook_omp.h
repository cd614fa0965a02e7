/* OpenMP helpers for pyx/codebook.pyx that also compile (as serial stubs) without -fopenmp. */
#ifndef QCORE_CODEBOOK_OMP_H
#define QCORE_CODEBOOK_OMP_H
#ifdef _OPENMP
#include <omp.h>
static int cb_omp_max_threads(void) { return omp_get_max_threads(); }
static int cb_have_openmp(void) { return 1; }
#else
static int cb_omp_max_threads(void) { return 1; }
static int cb_have_openmp(void) { return 0; }
#endif
#endif
