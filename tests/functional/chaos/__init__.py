"""A randomized, seeded chaos run against the test cluster, with an invariant checker.

``python -m tests.functional.chaos --seed N --duration SECONDS [--tls]`` (or
``tox -e chaos -- ...``) starts RPC servers and callers in subprocesses, mixes
every fault class of the harness at random (seeded) times, then checks the
invariants and prints a table per fault class. See ``docs/testing.rst``.

Modules: :mod:`.records` (what workers write), :mod:`.worker` (server and
caller processes), :mod:`.plan` (the seeded schedule, pure),
:mod:`.injectors` (fault episodes on the cluster), :mod:`.checker` (the
invariants, pure) and :mod:`.run` (the orchestrator and its command line).
"""
