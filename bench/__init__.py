"""Benchmark harness: flask_pgtq and its peers, side by side (see README.md)."""
