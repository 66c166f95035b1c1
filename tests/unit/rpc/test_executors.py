"""Executors: slots are reserved before work is taken; shutdown is bounded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from rabbit_ha_driver.rpc.executors import (
    EventletExecutor,
    ThreadingExecutor,
    make_executor,
)


def test_reserved_slots_bound_the_work_in_flight():
    executor = ThreadingExecutor(max_workers=2)
    release = threading.Event()
    assert executor.reserve(0) and executor.reserve(0)
    assert not executor.reserve(0)
    executor.submit(release.wait)
    executor.submit(release.wait)
    assert executor.busy == 2
    assert not executor.reserve(0.01)
    release.set()
    assert executor.shutdown(timeout=5)
    assert executor.busy == 0


def test_an_unused_reservation_is_given_back():
    executor = ThreadingExecutor(max_workers=1)
    assert executor.reserve(0)
    executor.release()
    assert executor.reserve(0)
    executor.release()
    executor.shutdown(timeout=1)


def test_work_that_raises_frees_its_slot(caplog):
    executor = ThreadingExecutor(max_workers=1)
    assert executor.reserve(0)
    executor.submit(lambda: 1 / 0)
    assert executor.shutdown(timeout=5)
    assert "unhandled error" in caplog.text


def test_shutdown_reports_work_still_running():
    executor = ThreadingExecutor(max_workers=1)
    gate = threading.Event()
    executor.reserve(0)
    executor.submit(gate.wait)
    assert executor.shutdown(timeout=0.01) is False
    assert not executor.reserve(0)  # no new work after shutdown
    gate.set()


def test_spawn_returns_a_bounded_join():
    executor = ThreadingExecutor(max_workers=1)
    gate = threading.Event()
    join = executor.spawn(gate.wait, name="loop")
    assert join(0.01) is False
    gate.set()
    assert join(5) is True
    executor.shutdown(timeout=1)


def test_eventlet_executor_runs_green_threads(caplog):
    eventlet = pytest.importorskip("eventlet")
    executor = make_executor("eventlet", max_workers=2)
    assert isinstance(executor, EventletExecutor)
    assert "monkey-patched" in caplog.text  # this test process is not patched
    ran = []
    assert executor.reserve(0)
    executor.submit(lambda: ran.append(1))
    eventlet.sleep(0)
    assert ran == [1]
    assert executor.busy == 0


def test_executor_by_name():
    assert make_executor("threading", 3).max_workers == 3
    custom = ThreadingExecutor(1)
    assert make_executor(custom) is custom
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("processes")
    with pytest.raises(ValueError):
        ThreadingExecutor(0)


def test_workers_are_reused_and_never_exceed_the_slots():
    executor = ThreadingExecutor(max_workers=3)
    names: list[str] = []
    for _ in range(20):
        assert executor.reserve(5)
        done = threading.Event()
        executor.submit(lambda done=done: (names.append(threading.current_thread().name),
                                           done.set()))
        assert done.wait(5)
    assert executor.shutdown(timeout=5)
    assert len(set(names)) <= 3


def test_a_process_whose_server_was_never_stopped_still_exits():
    """A server's polling loop runs on a worker; exit must not wait for it."""
    script = textwrap.dedent("""
        from rabbit_ha_driver import RPCServer, from_url

        class Endpoint:
            def ping(self, ctxt):
                return "pong"

        server = RPCServer(from_url("memory://"), "exit-topic", "s", [Endpoint()])
        server.start()
        print("started", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "started" in done.stdout


def test_work_whose_worker_could_not_start_is_refused_once_and_never_runs_later():
    """The system refuses a new thread (a pids limit, no memory for its stack):
    submit() raises and gives the slot back. That work must not then run on
    the next worker behind its caller's back, nor give its slot back a second
    time (the slots would no longer add up and shutdown would wait for work
    that does not exist)."""
    executor = ThreadingExecutor(max_workers=2)
    ran: list[str] = []
    assert executor.reserve(0)
    # No thread can get a stack this large: starting one fails for real.
    previous = threading.stack_size(2 ** 44)
    try:
        with pytest.raises(RuntimeError):
            executor.submit(lambda: ran.append("refused"))
    finally:
        threading.stack_size(previous)
    assert executor.busy == 0
    done = threading.Event()
    assert executor.reserve(0)
    executor.submit(done.set)
    assert done.wait(5)
    assert ran == []
    assert executor.shutdown(timeout=5)
    assert executor.busy == 0
