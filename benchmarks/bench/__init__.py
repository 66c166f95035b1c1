"""The benchmark behind ``rabbit-ha bench``: this library next to oslo.messaging and py-amqp.

How it works
------------
Five *subjects* (:mod:`~benchmarks.bench.subjects`) run the same RPC
servers and clients against one broker:

* ``rabbit_ha``: this library's own API (``RPCClient``, ``RPCServer``);
* ``rabbit_ha_oslo``: oslo.messaging's API on this library's driver
  (``rabbit-ha://``);
* ``oslo_rabbit``: oslo.messaging's API on its own rabbit driver
  (``rabbit://``), the reference the targets compare against;
* ``bare_amqp``: py-amqp with no framework (JSON bodies, a reply queue, a
  correlation id per call, publisher confirms for casts): the floor;
* ``oslo_fake``: oslo.messaging's API on its in-process ``fake://`` driver,
  no broker at all: the cost of oslo.messaging's own layers.

The ``oslo_*`` subjects need oslo.messaging (the ``oslo`` extra); without it
they are reported as unavailable and the others still run.

One *run* of one subject is one process (:mod:`~benchmarks.bench.worker`),
so every run starts from a fresh interpreter and memory figures are not
skewed by an earlier subject. A run measures, with a short warm-up before
each timed phase of ``--seconds`` seconds:

* ``rss_kb_per_connection``: resident memory added by each of 20 more
  connections, opened one after the other and kept open (not for
  ``oslo_fake``, which has none);
* ``rss_kb_per_idle_server``: resident memory added by each of 10 more
  started RPC servers on topics nobody sends to;
* ``calls_per_s``, ``call_p50_ms``, ``call_p99_ms``: one thread calling
  ``ping`` with a 64-byte payload back to back; the rate, the median and the
  99th percentile of the call latencies;
* ``concurrent_calls_per_s``: 8 threads calling at once;
* ``casts_per_s``: one thread casting, counted until the server received
  every cast;
* ``fanout_per_s``: fanout casts to 3 servers, counted until every server
  received every one.

:mod:`~benchmarks.bench.rounds` runs ``--runs`` *rounds*; each round
runs every subject once, and each round starts one subject further along
than the one before, so the order rotates and a burst of load on a shared
machine does not always land on the same subject. A run that fails (exits
non-zero, prints no figures, or outlives its timeout and is killed) is
reported with the last lines of its stderr and leaves its figures out; the
other runs go on.

Then ``heartbeat_cpu_percent``, for ``rabbit_ha`` only
(:mod:`~benchmarks.heartbeat_cpu`, also a process of its own): 200
idle library connections at ``heartbeat_timeout_threshold`` T = 10 s, T
seconds to settle, then ``--runs`` windows of ``--heartbeat-seconds`` (60)
each, in which the process's CPU time (user + system) is taken as a
percentage of one core.

:mod:`~benchmarks.bench.report` takes, per subject and figure, the
median (:func:`statistics.median`) of the runs that produced it, with its
minimum, maximum and count, and the ratios of the medians: the targets
(e.g. ``rabbit_ha`` ``calls_per_s`` at least twice ``oslo_rabbit``'s),
each PASS, MISS, or n/a when a figure is missing, and informational ratios
without a target. The targets need at least five runs to be read with any
confidence. :mod:`~benchmarks.bench.command` is the command itself.

Where it lives
--------------
Beside the package, in the source checkout, not in the wheel: it needs
oslo.messaging's driver internals and is a development tool.
``rabbit-ha bench`` imports it from the checkout that holds the
``rabbit_ha_driver`` it runs from (see :mod:`rabbit_ha_driver.cli.measure`),
and every child process (``python -m benchmarks...``) gets that checkout on
its ``PYTHONPATH`` (:func:`child_env`), whatever its working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The source checkout these benchmarks are part of.
CHECKOUT = Path(__file__).resolve().parents[2]


def child_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``env`` with :data:`CHECKOUT` first on ``PYTHONPATH``, for a ``python -m benchmarks...`` child."""
    paths = [str(CHECKOUT), *(path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path)]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
