"""The public surface: ``__all__``, what it names exists, and the docs list the same."""

from __future__ import annotations

import pathlib
import re

import rabbit_ha_driver

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api.rst"


def test_every_public_name_exists():
    for name in rabbit_ha_driver.__all__:
        assert hasattr(rabbit_ha_driver, name), name


def test_docs_list_exactly_the_public_names():
    listed = re.findall(r"^\* ``(\w+)``$", DOCS.read_text(), flags=re.M)
    assert sorted(listed) == sorted(rabbit_ha_driver.__all__)


def test_errors_share_one_root():
    errors = [getattr(rabbit_ha_driver, n) for n in rabbit_ha_driver.__all__
              if isinstance(getattr(rabbit_ha_driver, n), type)
              and issubclass(getattr(rabbit_ha_driver, n), Exception)]
    assert len(errors) > 10
    assert all(issubclass(e, rabbit_ha_driver.RabbitHAError) for e in errors)
