"""rpc/envelope.py keeps every name it has provided, each the very object of its new home."""

from __future__ import annotations

import pathlib
import re

import pytest

from rabbit_ha_driver import exceptions
from rabbit_ha_driver.rpc import context, envelope, failures, messages, naming, queue_types, topology, wire

HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parents[3]
ATTRIBUTE = re.compile(r"\benvelope\.([A-Za-z_]\w*)")
FROM_IMPORT = re.compile(r"from rabbit_ha_driver\.rpc\.envelope import (\([^)]*\)|[^\n]*)")

HOMES = (wire, context, messages, failures, naming, topology, queue_types, exceptions)

#: Names whose home calls them otherwise.
RENAMED = {"durable": (queue_types, "topic_durable")}


@pytest.mark.parametrize("name", envelope.__all__)
def test_each_name_is_its_homes_object(name):
    home, home_name = RENAMED.get(name, (None, name))
    homes = [home] if home else [m for m in HOMES if hasattr(m, name)]
    assert homes, f"{name} has no home"
    assert getattr(envelope, name) is getattr(homes[0], home_name)


def _names_used_elsewhere() -> set[str]:
    """Every ``envelope.X`` and ``from rabbit_ha_driver.rpc.envelope import X`` in the tree."""
    used: set[str] = set()
    for folder in ("rabbit_ha_driver", "tests", "benchmarks", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".rst") or path in (HERE, pathlib.Path(envelope.__file__)):
                continue
            text = path.read_text(errors="replace")
            used.update(ATTRIBUTE.findall(text))
            for names in FROM_IMPORT.findall(text):
                used.update(n.split(" as ")[0].strip() for n in names.strip("()").split(",")
                            if n.strip())
    return used - {"py"}  # "rpc/envelope.py" in prose


def test_the_names_other_modules_use_are_all_there():
    used = _names_used_elsewhere()
    assert "encode" in used  # the scan finds them
    assert sorted(used - set(envelope.__all__)) == []


def test_bad_request_travels_under_this_module():
    # An oslo.messaging caller allowing this module imports the class from here.
    assert envelope.BadRequest is exceptions.BadRequest
    assert failures.WIRE_MODULES[exceptions.BadRequest] == envelope.__name__
