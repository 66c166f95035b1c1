"""The chaos run's plan and invariant checker, on made-up records (no broker
traffic; these live here because the chaos package does)."""

from __future__ import annotations

from typing import Any

from .chaos import checker
from .chaos.plan import FAULT_CLASSES, conflicts, make_plan

SERVERS, CALLERS = ["s1", "s2"], ["c1"]


def test_plan_is_a_function_of_the_seed_and_has_every_class() -> None:
    plan = make_plan(42, 120, SERVERS, CALLERS)
    assert [str(e) for e in plan] == [str(e) for e in make_plan(42, 120, SERVERS, CALLERS)]
    assert [str(e) for e in plan] != [str(e) for e in make_plan(43, 120, SERVERS, CALLERS)]
    assert {e.cls for e in plan} == set(FAULT_CLASSES)
    assert [e.at for e in plan] == sorted(e.at for e in plan)
    assert sum(e.cls == "full_restart" for e in plan) == 1
    # Even a plan shorter than its classes has each one.
    assert {e.cls for e in make_plan(1, 5, SERVERS, CALLERS)} == set(FAULT_CLASSES)


def test_node_faults_wait_for_each_other_and_api_faults_for_a_freeze() -> None:
    assert not conflicts("kill_node", [])
    assert conflicts("kill_node", ["freeze_node"])
    assert conflicts("freeze_node", ["delete_queue"])
    assert conflicts("memory_alarm", ["freeze_node"])
    assert not conflicts("memory_alarm", ["kill_node", "drop_server"])
    assert conflicts("drop_caller", ["full_restart"])
    assert conflicts("full_restart", ["drop_caller"])


def fault(cls: str, t0: float, t1: float, detail: str = "") -> dict[str, Any]:
    return {"k": "fault", "cls": cls, "t0": t0, "t1": t1, "detail": detail, "index": 0}


def call(t0: float, t1: float, *, ok: bool = True, wrong: bool = False,
         err: str | None = None) -> dict[str, Any]:
    return {"k": "call", "id": f"c{t0}", "topic": "t", "server": None, "t0": t0, "t1": t1,
            "timeout": 5.0, "ok": ok, "wrong": wrong, "err": err, "caller": "c1"}


def cast(cast_id: str, t0: float, *, sent: bool = True, fanout: bool = False) -> dict[str, Any]:
    return {"k": "cast", "id": cast_id, "topic": "t", "fanout": fanout, "server": None,
            "t0": t0, "t1": t0 + 0.1, "timeout": 10.0, "sent": sent, "err": None, "caller": "c1"}


def handled(cast_id: str, server: str = "s1") -> dict[str, Any]:
    return {"k": "handled", "id": cast_id, "server": server, "t": 0.0}


def test_messages_are_attributed_to_faults_active_in_the_window_before_them() -> None:
    episodes = [checker.Episode("kill_node", "", 10, 20), checker.Episode("drop_caller", "", 50, 60)]
    assert checker.attribute(0, 5, episodes, grace=10) == ("none",)
    assert checker.attribute(5, 11, episodes, grace=10) == ("kill_node",)
    assert checker.attribute(29, 31, episodes, grace=10) == ("kill_node",)
    assert checker.attribute(31, 35, episodes, grace=10) == ("none",)
    assert checker.attribute(25, 55, episodes, grace=10) == ("drop_caller", "kill_node")


def test_a_clean_run_passes() -> None:
    records = [fault("kill_node", 10, 20), call(1, 1.1), call(12, 16, ok=False, err="Timeout"),
               cast("a", 2), handled("a"), cast("b", 12, sent=False)]
    report = checker.check(records, start=0, grace=10)
    assert report.ok, report.render()
    assert report.classes["kill_node"].raised == 1
    assert report.classes["kill_node"].casts_failed == 1
    assert report.classes["none"].casts_sent == 1


def test_each_invariant_can_fail_and_names_its_fault_class() -> None:
    records = [
        fault("freeze_node", 10, 14),
        fault("delete_queue", 30, 30, "queue=topic topic=t server=s1 name=t"),
        call(11, 16.6, ok=False, err="MessagingTimeout"),    # 0.6 s over: violation
        call(12, 17.4),                                      # 0.4 s over: allowed
        call(1, 2, ok=False, wrong=True),                    # wrong answer, no fault
        cast("lost", 12),                                    # sent, never handled
        cast("gone", 29),                                    # its queue was deleted
        cast("dup", 12), handled("dup"), handled("dup"),
    ]
    end = [checker.Violation("after: threads within 10% of warm-up", ("after",), 100, "s1: 6 -> 9")]
    report = checker.check(records, start=0, grace=10, end_violations=end)
    assert not report.ok
    assert report.failing() == {
        "after: threads within 10% of warm-up": ["after"],
        "call: not done within timeout + 0.5 s": ["freeze_node"],
        "call: wrong answer": ["none"],
        "cast: sent but never handled": ["freeze_node"],
    }
    freeze = report.classes["freeze_node"]
    assert (freeze.overruns, freeze.lost, freeze.duplicates) == (1, 1, 1)
    assert abs(freeze.worst_overrun - 0.6) < 1e-9
    assert report.classes["none"].lost_explained == 1  # the deletion came after it
    assert "its topic queue was deleted" in report.explained[0]
    text = report.render()
    assert "cast: sent but never handled [c1] (freeze_node): cast lost to t, written +12.00s" in text
    assert "call c11 to t took 5.60s (timeout 5.0s), raised MessagingTimeout" in text


def test_a_plan_without_classes_has_no_episodes() -> None:
    assert make_plan(42, 120, SERVERS, CALLERS, classes=()) == []


def test_an_overrun_names_a_stall_of_the_caller_process_but_stays_a_violation() -> None:
    records = [call(100.0, 107.0, err="MessagingTimeout"), call(200.0, 207.0, err="MessagingTimeout"),
               {"k": "stall", "t0": 103.0, "t1": 105.5, "seconds": 2.5, "caller": "c1"}]
    report = checker.check(records, start=0.0, grace=10.0)
    details = sorted(v.detail for v in report.violations)
    assert len(details) == 2 and not report.ok
    assert "got no CPU for 2.50s" in details[0]
    assert "no CPU" not in details[1]
