"""Benchmark scripts, outside the package: timings (pipeline, speed, data_stages) and the
experiment screens (screens/); their numbers in results/. Run from the repo root: python -m bench.NAME."""
