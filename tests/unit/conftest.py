"""What every unit test shares: a bound on its run time.

Unit tests never wait for real time (they use a fake clock), so a test still
running after :data:`TEST_TIMEOUT` seconds hangs: pytest-timeout fails it with
every thread's stack instead of letting the run go on for ever.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TEST_TIMEOUT = 300
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))
