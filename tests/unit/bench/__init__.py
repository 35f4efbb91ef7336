"""The benchmarks: what can be checked without running them."""
