"""Benchmarks of issue 5: ``bench/run --help``."""
