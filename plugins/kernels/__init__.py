"""Built-in kernels: ``numpy`` (the reference, the oracle in tests) and ``cython`` (the fast default)."""
