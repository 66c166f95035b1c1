"""Benchmarks run against a real broker; each module is a command (``python -m benchmarks.NAME``).

:mod:`benchmarks.bench` is what ``rabbit-ha bench`` runs. None of this is in
the wheel: it lives in the source checkout, beside the package.
"""
