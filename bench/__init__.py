"""Benchmarks and evidence runs (each a script; results in BENCHMARKS.md and RELIABILITY.md)."""
