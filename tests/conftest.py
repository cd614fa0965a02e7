import os

# Tests must not depend on the thread count of the machine they run on; kernels still run in parallel.
os.environ.setdefault("OMP_NUM_THREADS", "2")
