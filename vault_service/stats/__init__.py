"""The BI lane: aggregates only, small cells suppressed (see suppression.py)."""

import os

# The suppression check's linear algebra is small and runs inside a request: one
# BLAS thread per process (requests are the parallelism). Several threads per call
# made it five times slower on a busy two-CPU machine. Only effective before numpy
# is first imported, which in the service happens through this package.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
