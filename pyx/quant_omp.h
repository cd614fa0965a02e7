/* OpenMP helpers for pyx/quant.pyx that also compile (as serial stubs) without -fopenmp. */
#ifndef QCORE_QUANT_OMP_H
#define QCORE_QUANT_OMP_H
#ifdef _OPENMP
#include <omp.h>
static int qc_omp_max_threads(void) { return omp_get_max_threads(); }
static int qc_have_openmp(void) { return 1; }
#else
static int qc_omp_max_threads(void) { return 1; }
static int qc_have_openmp(void) { return 0; }
#endif
#endif
