"""Benchmarks: `python -m bench` (or `make bench`). Targets live here, never in timed unit tests."""
