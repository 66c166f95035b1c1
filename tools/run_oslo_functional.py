#!/usr/bin/env python3
"""Run oslo.messaging's own functional tests against rabbit-ha:// and rabbit://, compare.

Usage::

    python tools/run_oslo_functional.py --url rabbit://guest:guest@127.0.0.1:27672,...:27674/
    python tools/run_oslo_functional.py --url ... --json results.json --only test_functional

How it works. The tests ship with oslo.messaging
(``oslo_messaging.tests.functional.test_functional`` and
``oslo_messaging.tests.functional.notify.test_logger``); they read the broker
from ``RPC_TRANSPORT_URL`` and ``NOTIFY_TRANSPORT_URL`` and skip everything
when neither is set. For each scheme this script starts a child process of
itself with both variables set to the cluster's URL under that scheme (the
same hosts; ``rabbit-ha://`` loads this library's driver, ``rabbit://``
oslo.messaging's own). The child loads the modules with unittest's loader,
which applies their ``load_tests`` hook (testscenarios: pytest would not),
runs its share of them (``--workers`` processes per scheme, 4 by default;
the tests use unique topics so that they can run in parallel, as upstream
runs them) and prints one JSON line per test: outcome,
seconds, and for a test that did not pass, why (the skip reason, or the last
line of the traceback). The schemes run one after the other, never at once:
some tests use fixed topic names, and the two drivers speak the same wire
format, so a listener of one run would take the other run's messages.

The parent prints the counts per scheme and every test whose outcome differs
or that did not pass, with the reasons, and exits 1 when a test that passed
on ``rabbit://`` failed, erred or did not run on ``rabbit-ha://`` (or a
child crashed).

Tests that cannot apply are excluded up front with the reason, in
:data:`EXCLUDED` (MetricsTestCase needs an ``oslo.metrics`` collector process
and writes to ``/var/tmp``, outside the project). Tests that skip themselves
are reported with the reason they give; two of them skip on any scheme but
``rabbit://`` by design (``test_mandatory_call``, ``test_monitor_long_call``),
and ``tests/functional/test_oslo_driver.py`` runs the same checks on
``rabbit-ha://``.

``OS_TEST_TIMEOUT`` (oslotest's per-test timeout) defaults to 60 s here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import traceback
import unittest
from collections.abc import Iterator, Sequence
from typing import Any

MODULES = (
    "oslo_messaging.tests.functional.test_functional",
    "oslo_messaging.tests.functional.notify.test_logger",
)

#: Test id prefixes left out, with the reason.
EXCLUDED = {
    "oslo_messaging.tests.functional.test_functional.MetricsTestCase":
        "needs an oslo.metrics collector process and a socket in /var/tmp (outside the project)",
}

#: Tests that skip themselves on any scheme but ``rabbit://``, and where the
#: same check runs on ``rabbit-ha://``.
SCHEME_GATED = {
    "oslo_messaging.tests.functional.test_functional.CallTestCase.test_mandatory_call":
        "tests/functional/test_oslo_driver.py::test_at_least_once_call_to_nowhere",
    "oslo_messaging.tests.functional.test_functional.CallTestCase.test_monitor_long_call":
        "tests/functional/test_oslo_driver.py::test_call_monitor_keeps_a_long_call_alive",
}

SCHEMES = ("rabbit-ha", "rabbit")
PASSED = "pass"
FAILED = "fail"
ERROR = "error"
SKIPPED = "skip"
EXCLUDED_OUTCOME = "excluded"
MARKER = "@@oslo-functional@@ "


@dataclasses.dataclass
class Outcome:
    """What one test did under one scheme."""

    test: str
    outcome: str
    seconds: float = 0.0
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome == PASSED


# -- child: run the tests, print JSON lines -------------------------------------------


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class _Recorder(unittest.TestResult):
    """Prints one line per finished test."""

    def __init__(self) -> None:
        super().__init__()
        self._started: dict[str, float] = {}

    def _emit(self, test: unittest.TestCase, outcome: str, reason: str = "") -> None:
        test_id = test.id()
        seconds = time.monotonic() - self._started.pop(test_id, time.monotonic())
        record = dataclasses.asdict(Outcome(test_id, outcome, round(seconds, 2), reason))
        print(MARKER + json.dumps(record), flush=True)

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._started[test.id()] = time.monotonic()
        print(f"-- {test.id()}", file=sys.stderr, flush=True)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._emit(test, PASSED)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        text = self.failures[-1][1]
        print(text, file=sys.stderr, flush=True)
        self._emit(test, FAILED, _last_line(text))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        text = self.errors[-1][1]
        print(text, file=sys.stderr, flush=True)
        self._emit(test, ERROR, _last_line(text))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._emit(test, SKIPPED, reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._emit(test, PASSED, "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._emit(test, FAILED, "unexpected success")


def _iter_tests(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(suite, unittest.TestSuite):
        for item in suite:
            yield from _iter_tests(item)
    else:
        yield suite


#: JSON object of option defaults for both drivers (run_scheme's ``option_defaults``).
OPTION_DEFAULTS_ENV = "RHA_OSLO_FUNCTIONAL_OPTION_DEFAULTS"


def _apply_option_defaults() -> None:
    """Give both drivers' options the defaults the parent asked for (a RabbitMQ 4
    broker that denies transient queues needs quorum queues on both sides)."""
    defaults = json.loads(os.environ.get(OPTION_DEFAULTS_ENV) or "{}")
    if not defaults:
        return
    from oslo_config import cfg
    from oslo_messaging._drivers import impl_rabbit

    from rabbit_ha_driver import options

    cfg.set_defaults(impl_rabbit.rabbit_opts, **defaults)
    cfg.set_defaults(options.ALL_OPTS, **defaults)


def run_child(modules: Sequence[str], only: str | None, shard: int = 0, shards: int = 1) -> int:
    """Run this shard's tests of ``modules`` in this process; one JSON line per test.

    Tests are dealt out to ``shards`` processes in the order the loader gives
    them (tests of one class stay apart, so the slow ones spread out).
    """
    _apply_option_defaults()
    loader = unittest.TestLoader()
    pattern = re.compile(only) if only else None
    result = _Recorder()
    index = 0
    for module in modules:
        try:
            suite = loader.loadTestsFromName(module)
        except Exception:  # an import error is the whole module's outcome
            if shard == 0:
                record = Outcome(module, ERROR, 0.0, _last_line(traceback.format_exc()))
                print(MARKER + json.dumps(dataclasses.asdict(record)), flush=True)
            continue
        for test in _iter_tests(suite):
            test_id = test.id()
            if pattern is not None and not pattern.search(test_id):
                continue
            index += 1
            if (index - 1) % shards != shard:
                continue
            excluded = next((why for prefix, why in EXCLUDED.items()
                             if test_id.startswith(prefix)), None)
            if excluded is not None:
                record = Outcome(test_id, EXCLUDED_OUTCOME, 0.0, excluded)
                print(MARKER + json.dumps(dataclasses.asdict(record)), flush=True)
                continue
            test.run(result)
    return 0


# -- parent: one child per scheme, then the comparison -------------------------------


def scheme_url(url: str, scheme: str) -> str:
    """``url`` with its scheme replaced (the hosts, vhost and query stay)."""
    _, sep, rest = url.partition("://")
    if not sep:
        raise SystemExit(f"not a transport URL: {url!r}")
    return f"{scheme}://{rest}"


def run_scheme(url: str, scheme: str, *, only: str | None, timeout: float, workers: int,
               log_dir: str | None, option_defaults: dict[str, Any] | None = None,
               ) -> tuple[list[Outcome], float, str | None]:
    """Run the suites on one scheme in ``workers`` child processes.

    ``option_defaults``: defaults of options of both drivers (the same names).
    Returns the outcomes, the seconds it took and why a child crashed, if one did.
    """
    target = scheme_url(url, scheme)
    env = dict(os.environ, RPC_TRANSPORT_URL=target, NOTIFY_TRANSPORT_URL=target)
    env[OPTION_DEFAULTS_ENV] = json.dumps(option_defaults or {})
    env.setdefault("OS_TEST_TIMEOUT", "60")
    env.setdefault("PYTHONWARNINGS", "ignore")
    started = time.monotonic()
    children = []
    for shard in range(workers):
        command = [sys.executable, os.path.abspath(__file__), "--child",
                   "--shard", f"{shard}/{workers}"]
        if only:
            command += ["--only", only]
        log = (os.path.join(log_dir, f"oslo-functional-{scheme}-{shard}.log")
               if log_dir else os.devnull)
        with open(log, "w") as stderr:
            children.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                             stderr=stderr, text=True))
    outcomes: list[Outcome] = []
    crashes = []
    for shard, child in enumerate(children):
        left = max(1.0, timeout - (time.monotonic() - started))
        try:
            stdout, _ = child.communicate(timeout=left)
            if child.returncode:
                crashes.append(f"worker {shard} exited with {child.returncode}")
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, _ = child.communicate()
            crashes.append(f"worker {shard} did not finish within {timeout:.0f}s")
        outcomes += [Outcome(**json.loads(line[len(MARKER):]))
                     for line in stdout.splitlines() if line.startswith(MARKER)]
    outcomes.sort(key=lambda o: o.test)
    return outcomes, time.monotonic() - started, "; ".join(crashes) or None


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    found: dict[str, int] = {}
    for o in outcomes:
        found[o.outcome] = found.get(o.outcome, 0) + 1
    return found


def regressions(results: dict[str, list[Outcome]]) -> list[str]:
    """Tests that passed on rabbit:// and failed, erred or did not run on rabbit-ha://.

    A test that skips itself (with its reason) is reported, not counted.
    """
    base = {o.test: o for o in results.get("rabbit", [])}
    ours = {o.test: o for o in results.get("rabbit-ha", [])}
    return sorted(t for t, o in base.items() if o.passed and (
        t not in ours or ours[t].outcome in (FAILED, ERROR)))


def short(test_id: str) -> str:
    return test_id.replace("oslo_messaging.tests.functional.", "")


def report(results: dict[str, list[Outcome]], seconds: dict[str, float],
           crashes: dict[str, str | None]) -> str:
    lines = []
    for scheme in SCHEMES:
        if scheme not in results:
            continue
        c = counts(results[scheme])
        parts = ", ".join(f"{k} {c.get(k, 0)}" for k in (PASSED, FAILED, ERROR, SKIPPED,
                                                             EXCLUDED_OUTCOME))
        crash = f"  CRASH: {crashes[scheme]}" if crashes.get(scheme) else ""
        lines.append(f"{scheme + '://':<13} {len(results[scheme]):3d} tests: {parts}  "
                     f"({seconds[scheme]:.0f}s){crash}")
    by_test: dict[str, dict[str, Outcome]] = {}
    for scheme, outcomes in results.items():
        for o in outcomes:
            by_test.setdefault(o.test, {})[scheme] = o
    notable = [t for t, per in sorted(by_test.items())
               if any(not o.passed for o in per.values())
               or len({o.outcome for o in per.values()}) > 1]
    if notable:
        lines.append("")
        lines.append("tests that did not pass on some scheme:")
        for t in notable:
            lines.append(f"  {short(t)}")
            for scheme in SCHEMES:
                found = by_test[t].get(scheme)
                if found is None:
                    lines.append(f"    {scheme + '://':<13} not run")
                else:
                    why = f": {found.reason}" if found.reason and not found.passed else ""
                    lines.append(f"    {scheme + '://':<13} {found.outcome}{why}")
            if t in SCHEME_GATED:
                lines.append(f"    (skips itself unless the URL starts with rabbit://; "
                             f"on rabbit-ha:// see {SCHEME_GATED[t]})")
    bad = regressions(results)
    lines.append("")
    if bad:
        lines.append("passed on rabbit:// but not on rabbit-ha://: "
                     + ", ".join(short(t) for t in bad))
    else:
        lines.append("no test that passed on rabbit:// failed or erred on rabbit-ha://")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("RHA_TEST_TRANSPORT_URL"),
                        help="the cluster's transport URL (any scheme; default "
                        "$RHA_TEST_TRANSPORT_URL, which tools/rabbit_cluster.py env prints)")
    parser.add_argument("--schemes", default=",".join(SCHEMES),
                        help="comma-separated schemes to run (default: rabbit-ha,rabbit)")
    parser.add_argument("--only", help="run only tests whose id matches this regular expression")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds allowed for one scheme's run (default 900)")
    parser.add_argument("--workers", type=int, default=4,
                        help="processes per scheme, each running a share of the tests "
                        "(default 4; oslo.messaging's tests are written to run in parallel)")
    parser.add_argument("--json", help="also write every outcome to this file")
    parser.add_argument("--log-dir", help="keep each child's output (tracebacks, logs) here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        shard, _, shards = args.shard.partition("/")
        return run_child(MODULES, args.only, int(shard), int(shards))
    if not args.url:
        parser.error("--url is required (or set RHA_TEST_TRANSPORT_URL)")
    results: dict[str, list[Outcome]] = {}
    seconds: dict[str, float] = {}
    crashes: dict[str, str | None] = {}
    for scheme in args.schemes.split(","):
        scheme = scheme.strip()
        print(f"running oslo.messaging's functional tests on {scheme}:// ...", flush=True)
        results[scheme], seconds[scheme], crashes[scheme] = run_scheme(
            args.url, scheme, only=args.only, timeout=args.timeout, workers=max(1, args.workers),
            log_dir=args.log_dir)
    print(report(results, seconds, crashes))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"seconds": seconds, "crashes": crashes,
                       "results": {s: [dataclasses.asdict(o) for o in r]
                                   for s, r in results.items()}}, out, indent=1)
    failed = bool(regressions(results)) or any(crashes.values()) \
        or any(not results.get(s) for s in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
