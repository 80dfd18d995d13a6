"""Benchmarks (issue 5): each `bench/<name>.py` runs as `python -m bench.<name> [--smoke]`."""
