"""Benchmarks: speed ratios measured in one run against a baseline of the same run."""
