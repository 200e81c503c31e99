"""Benchmark harnesses: per-op scripts, the runner (python -m benchmarks) and the static kernel report."""
