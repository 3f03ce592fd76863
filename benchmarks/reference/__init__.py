"""PyTorch references for the benchmarks: the same networks and scorers, written for torch."""
