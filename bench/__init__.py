"""Benchmarks against peers on the same machine; each script runs on its own."""
