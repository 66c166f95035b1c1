"""CPU cost of keeping idle connections alive: the library against bare py-amqp.

Usage::

    python -m benchmarks.heartbeat_cpu --url amqp://guest:guest@127.0.0.1:5672// \
        [--connections 200] [--threshold 10] [--seconds 60] [--settle SECONDS] \
        [--windows 1] [--no-classic] [--json]

The benchmark lives in :mod:`rabbit_ha_driver.bench.heartbeat` (where its
docstring explains how it measures); this command runs it from a checkout.
"""

from __future__ import annotations

import sys

from rabbit_ha_driver.bench.heartbeat import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks.heartbeat_cpu"))
