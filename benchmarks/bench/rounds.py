"""Running the bench: rounds of one-run worker processes, then the heartbeat figure.

How this works. Every run of a subject is a child process
(``python -m benchmarks.bench.worker``), started by a *runner*: a
function that takes the command line and a timeout and returns a
:class:`Completed`. The real one, :func:`run_process`, kills a child (and
anything it started) that outlives its timeout; tests pass a fake that
returns canned output, so nothing here needs a broker or waits.

A round runs every selected subject once. Each round starts one subject
further along the list than the round before (:func:`round_orders`), so a
burst of load on a shared machine, or a broker that warms up, does not always
hit the same subject first or last.

A run fails when its process exits non-zero, outlives its timeout or does not
end with a JSON object of figures; :func:`run_one` turns that into a
:class:`RunResult` without figures whose ``error`` gives the exit status and
the last lines of stderr. The rounds go on: a failed run only leaves its
figures out of the medians.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.bench import child_env

#: Seconds a worker run may take beyond its timed phases before it is killed.
RUN_TIMEOUT = 300.0
#: Timed phases of one worker run (sequential, concurrent, casts, fanout).
TIMED_PHASES = 4
#: Lines of a failed run's stderr shown in its report.
STDERR_LINES = 5

#: The heartbeat figure: idle library connections and their threshold T.
HEARTBEAT_CONNECTIONS = 200
HEARTBEAT_THRESHOLD = 10

#: Subjects that run oslo.messaging's API, so need the ``oslo`` extra.
NEEDS_OSLO = frozenset({"rabbit_ha_oslo", "oslo_rabbit", "oslo_fake"})
#: Subjects that talk to no broker.
BROKERLESS = frozenset({"oslo_fake"})


@dataclasses.dataclass(frozen=True)
class Completed:
    """What a child process did: ``returncode`` None means killed at its timeout."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


#: Runs a command line with a timeout in seconds.
Runner = Callable[[Sequence[str], float], Completed]


def run_process(argv: Sequence[str], timeout: float) -> Completed:
    """Run ``argv`` in a session of its own; kill the session at ``timeout``."""
    started = time.monotonic()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                            env=child_env())
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc)
        stdout, stderr = proc.communicate()
        return Completed(None, stdout, stderr, time.monotonic() - started)
    except BaseException:  # Ctrl-C: leave no worker behind
        _kill_session(proc)
        proc.wait()
        raise
    return Completed(proc.returncode, stdout, stderr, time.monotonic() - started)


def _kill_session(proc: subprocess.Popen[str]) -> None:
    # The child leads its own session (start_new_session), so its group id is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run of one subject: its figures, or why there are none."""

    subject: str
    round: int  # 1-based
    figures: Mapping[str, float] | None
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.figures is not None


def round_orders(subjects: Sequence[str], runs: int) -> list[list[str]]:
    """The order of the subjects in each of ``runs`` rounds: rotated by one each round."""
    subjects = list(subjects)
    if not subjects:
        return [[] for _ in range(runs)]
    return [subjects[r % len(subjects):] + subjects[:r % len(subjects)] for r in range(runs)]


def run_timeout(seconds: float) -> float:
    """How long one worker run with timed phases of ``seconds`` may take."""
    return RUN_TIMEOUT + TIMED_PHASES * seconds


def worker_argv(subject: str, url: str, seconds: float, python: str = sys.executable) -> list[str]:
    return [python, "-m", "benchmarks.bench.worker", subject, url, "--seconds", f"{seconds:g}"]


def last_json_object(stdout: str) -> dict[str, Any]:
    """The JSON object on the last non-empty line of a child's stdout.

    Raises ValueError when there is none.
    """
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("nothing on stdout")
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise ValueError(f"the last line of stdout is not JSON: {lines[-1][:200]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the last line of stdout is not a JSON object: {lines[-1][:200]!r}")
    return data


def parse_figures(stdout: str) -> dict[str, float]:
    """The figures on the last non-empty line of a child's stdout.

    Raises ValueError when that line is not a JSON object of numbers.
    """
    data = last_json_object(stdout)
    figures = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"figure {name!r} is not a number: {value!r}")
        figures[name] = float(value)
    return figures


def stderr_tail(stderr: str, lines: int = STDERR_LINES) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()][-lines:]


def describe_failure(completed: Completed, timeout: float, problem: str = "") -> str:
    """Why a run failed, with the last lines of its stderr."""
    if completed.returncode is None:
        why = f"killed after its {timeout:g}s timeout"
    elif completed.returncode != 0:
        why = f"exit status {completed.returncode}"
    else:
        why = f"exit status 0 but no figures ({problem})"
    tail = stderr_tail(completed.stderr)
    return why + ("; last lines of stderr:\n" + "\n".join(f"    {line}" for line in tail) if tail
                  else "; nothing on stderr")


def run_one(subject: str, round_: int, url: str, seconds: float, runner: Runner) -> RunResult:
    """One worker run of ``subject``; a failure becomes a result without figures."""
    timeout = run_timeout(seconds)
    completed = runner(worker_argv(subject, url, seconds), timeout)
    problem = ""
    if completed.returncode == 0:
        try:
            figures = parse_figures(completed.stdout)
        except ValueError as error:
            problem = str(error)
        else:
            return RunResult(subject, round_, figures, seconds=completed.seconds)
    return RunResult(subject, round_, None, describe_failure(completed, timeout, problem),
                     completed.seconds)


def unavailable_subjects(subjects: Sequence[str],
                         find_spec: Callable[[str], Any] = importlib.util.find_spec) -> dict[str, str]:
    """Subjects that cannot run here, with the reason."""
    missing = {}
    if find_spec("oslo_messaging") is None:
        for name in subjects:
            if name in NEEDS_OSLO:
                missing[name] = ("oslo.messaging is not installed (pip install "
                                 "'rabbit_ha_driver[oslo]')")
    return missing


def run_rounds(subjects: Sequence[str], url: str, runs: int, seconds: float, runner: Runner,
               progress: Callable[[str], None]) -> list[RunResult]:
    """``runs`` rounds of every subject, in rotating order."""
    results = []
    for index, order in enumerate(round_orders(subjects, runs)):
        round_ = index + 1
        for subject in order:
            result = run_one(subject, round_, url, seconds, runner)
            results.append(result)
            if result.ok:
                progress(f"round {round_}/{runs}: {subject} ok in {result.seconds:.1f}s")
            else:
                progress(f"round {round_}/{runs}: {subject} FAILED after {result.seconds:.1f}s: "
                         f"{result.error}")
    return results


@dataclasses.dataclass(frozen=True)
class HeartbeatResult:
    """The heartbeat figure's windows, or why there are none."""

    windows_percent: tuple[float, ...]
    details: Mapping[str, Any]
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def unhealthy(self) -> int:
        """Connections declared dead or lost while idle (there should be none)."""
        return int(self.details.get("declared_dead", 0)) + int(self.details.get("lost", 0))


def heartbeat_argv(url: str, windows: int, seconds: float, python: str = sys.executable) -> list[str]:
    return [python, "-m", "benchmarks.heartbeat_cpu", "--url", url, "--json",
            "--connections", str(HEARTBEAT_CONNECTIONS), "--threshold", str(HEARTBEAT_THRESHOLD),
            "--windows", str(windows), "--seconds", f"{seconds:g}"]


def heartbeat_timeout(windows: int, seconds: float) -> float:
    return RUN_TIMEOUT + HEARTBEAT_THRESHOLD + windows * seconds


def run_heartbeat(url: str, windows: int, seconds: float, runner: Runner) -> HeartbeatResult:
    """The heartbeat benchmark's library phase: ``windows`` windows of ``seconds``."""
    timeout = heartbeat_timeout(windows, seconds)
    completed = runner(heartbeat_argv(url, windows, seconds), timeout)
    problem = ""
    if completed.returncode == 0:
        try:
            lines = [line for line in completed.stdout.splitlines() if line.strip()]
            details = json.loads(lines[-1]) if lines else None
            if not isinstance(details, dict):
                raise ValueError("no JSON object on the last line of stdout")
            values = tuple(float(v) for v in details["windows_percent"])
            if not values:
                raise ValueError("no window measured")
        except (ValueError, KeyError, TypeError) as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            return HeartbeatResult(values, details)
    return HeartbeatResult((), {}, describe_failure(completed, timeout, problem))

