"""Benchmarks: perf_analyzer on Triton, the robot-fleet load generator and the side-by-side comparison.

See docs/BENCHMARKS.md for what each one measures and how to run it.
"""
