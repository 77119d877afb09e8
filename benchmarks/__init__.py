"""Benchmarks of nat_estimators (see benchmarks/README.md)."""
