"""One-off studies kept with their results (see README.md); not the benchmarks users run."""
