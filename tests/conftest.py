"""A bound on every test's run time, per suite.

pytest-timeout fails a test still running after its bound with every
thread's stack, so a hang shows as a failure instead of a run that never
ends. Unit tests never wait for real time (they use a fake clock): 300 s
means a hang. A functional test gets 600 s; the slow figure runs
(``-m slow``) repeat scenarios for long and get no bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
TIMEOUTS = {HERE / "unit": 300, HERE / "functional": 600}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is not None or item.get_closest_marker("slow"):
            continue
        for suite, seconds in TIMEOUTS.items():
            if suite in item.path.parents:
                item.add_marker(pytest.mark.timeout(seconds))
