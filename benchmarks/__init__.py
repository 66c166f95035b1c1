"""Benchmarks run against a real broker; each module is a command (``python -m benchmarks.NAME``)."""
