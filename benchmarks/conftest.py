"""pytest benchmarks: time real kernels, never the Triton interpreter."""
import os

os.environ.pop("TRITON_INTERPRET", None)
