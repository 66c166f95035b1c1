"""The cost at scale behind ``rabbit-ha bench --scale``: what many services cost a broker and a host.

``rabbit-ha bench`` (:mod:`benchmarks.bench`) compares one client with
another on the happy path. The scale bench asks what the library costs when
there are many of it: the broker's connections, channels, queues and memory
per idle service, a restart storm, throughput as concurrency, payload size and
fanout grow, and the host's CPU and memory as idle connections pile up. It is
a development tool, not part of CI; the figures are on the docs' results page.

The parts
---------
Each part is a program of its own, run once per subject and round as a child
process, that prints as the last line of its standard output one JSON object
``{curve: {x: {figure: number}}}`` (``x`` is a string: a count, a size);
a figure that does not apply to a subject, or that was not measured, is left
out.

``footprint`` (:mod:`benchmarks.scale.footprint`)
    ``python -m benchmarks.scale.footprint SUBJECT URL [--counts 10,50]
    [--storm|--no-storm]``. Starts N services of one subject, each a
    process of its own as in a deployment (an RPC server, a notification
    listener, an RPC client and a notifier), and reads the broker's totals
    before and after, divided by N: curve ``footprint_idle`` (the services
    idle) and ``footprint_load`` (the services calling each other and
    notifying), x = N, figures ``connections``, ``channels``, ``queues``,
    ``consumers``, ``erlang_processes`` and ``memory_bytes``, each *per
    service*. Curve ``storm``, x = N (50): every service killed and as many
    started again at once: ``all_answering_s`` (from the kill until every new
    service answered and was answered), ``slowest_answer_after_start_s`` (the
    longest time from one service's start to its server's first answer),
    ``slowest_answer_after_imports_s`` (the same from the end of its imports,
    where the library's code starts, until it answered and was answered),
    ``peak_memory_bytes`` (the broker's memory above the baseline at its
    highest), ``connections_created`` and ``connections_closed`` (the
    broker's churn counters), ``queues_left`` (queues of the killed services
    still there without a consumer), ``queue_expiry_s`` (how long the broker
    keeps them: their longest ``x-expires``) and
    ``failed_services``. It measures the broker's totals, so nothing else may
    run on that broker meanwhile. Subjects ``rabbit_ha``, ``rabbit_ha_oslo``,
    ``oslo_rabbit``.
``curves`` (:mod:`benchmarks.scale.curves`)
    ``python -m benchmarks.scale.curves SUBJECT URL [--curves
    concurrency,size,fanout] [--seconds S]``. Throughput as the load grows:
    ``concurrency`` (x = client threads 1, 4, 16, 64; ``calls_per_s``),
    ``size`` (x = payload bytes 100 to 1000000; ``calls_per_s`` and
    ``bytes_per_s``, the payload bytes carried each way per second) and
    ``fanout`` (x = servers 1, 5, 20; ``casts_per_s``, fanout casts received
    by every server). Subjects ``rabbit_ha``, ``rabbit_ha_oslo``,
    ``oslo_rabbit``, ``bare_amqp``.
``idle`` (:mod:`benchmarks.scale.idle`)
    ``python -m benchmarks.scale.idle SUBJECT URL [--counts
    10,100,1000,2000] [--seconds S]``. N idle connections with heartbeats in
    one process: ``cpu_percent`` (the process's CPU time as a share of one
    core over ``S`` seconds), ``rss_kb`` and ``rss_kb_per_connection`` (its
    resident memory, and what each connection added), ``declared_dead``
    (connections the client gave up on while idle: there should be none).
    Subjects ``rabbit_ha``, ``oslo_rabbit``, ``bare_amqp``.

The subjects are those of :mod:`benchmarks.bench.subjects` (``oslo_fake``,
which has no broker, has no place here); the ``oslo_*`` subjects need
oslo.messaging and are reported unavailable without it.

Rounds
------
:mod:`~benchmarks.scale.command` runs ``--runs`` rounds (5 by default;
``--footprint-runs``, ``--curves-runs`` and ``--idle-runs`` change one part's
count). A round runs every selected part once for every selected subject it
has. Each round starts one part further along the list than the round before,
and within a part one subject further along
(:func:`benchmarks.bench.rounds.round_orders`), so a burst of load on a shared
machine, or a broker warming up, does not always fall on the same part or
subject. A run that exits non-zero, prints no figures or outlives its timeout
(it is then killed with everything it started) is reported with the last lines
of its stderr and leaves its figures out; the other runs go on.

Figures and targets
-------------------
:mod:`~benchmarks.scale.report` takes, per curve, x, subject and figure, the
median of the runs that produced it, with its minimum, maximum and count, and
judges the targets on the medians: each PASS, MISS, or n/a when a figure is
missing. Beside the ratio of the medians it gives the range of the per-round
ratios, each from the two runs of the same round, and in how many rounds the
target held. The targets:

* broker memory, connections and channels per idle service
  (``footprint_idle`` at N = 10 and N = 50): ``rabbit_ha`` at most 0.5x
  ``oslo_rabbit``'s (``rabbit_ha_oslo``'s ratios are shown beside);
* the restart storm of 50 services: ``slowest_answer_after_imports_s`` at
  most 10 s for ``rabbit_ha`` and ``rabbit_ha_oslo`` (every service answers
  within 10 s of its start; the start is taken where its imports end, because
  fifty interpreters importing at once on a two-core machine spend most of
  the time before that, the same for every subject, and
  ``slowest_answer_after_start_s`` is shown beside), ``queues_left`` 0 once
  the queues' expiry passed (the services set ``rabbit_transient_queues_ttl``
  to 20 s so that the run can wait for it; ``oslo_rabbit``'s are shown
  beside);
* ``concurrency`` 64: ``rabbit_ha`` ``calls_per_s`` at least 0.8x
  ``bare_amqp``'s; ``size`` 1000000: ``rabbit_ha`` ``bytes_per_s`` at least
  0.8x ``bare_amqp``'s;
* ``idle`` 2000: ``rabbit_ha`` ``cpu_percent`` under 2 (% of one core), and
  its growth no faster than linear: the CPU per connection at 2000
  connections at most 1.25 times the CPU per connection at 100, that is
  ``(cpu_percent[2000] / 2000) / (cpu_percent[100] / 100) <= 1.25``.

:mod:`~benchmarks.scale.plots` draws one PNG per curve and figure from the
``--output`` file (``python -m benchmarks.scale.plots --input scale.json
--output-dir docs/_static/scale``).
"""
