"""Measuring: BEIR metrics and latency, fusion tuning, search cost against size, and
the benchmarks (``bench/``)."""
