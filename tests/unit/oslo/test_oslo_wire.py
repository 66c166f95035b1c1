"""The oslo.messaging driver's encoding: the same bytes oslo.messaging's rabbit driver writes."""

from __future__ import annotations

import datetime
import json
import uuid

import pytest
from oslo_serialization import jsonutils

from rabbit_ha_driver.exceptions import InvalidMessage
from rabbit_ha_driver.oslo.wire import encode

LIMIT = 1 << 20

MESSAGES = [
    {"method": "record", "args": {"n": 1}, "namespace": None, "version": "1.0",
     "_unique_id": "0" * 32},
    {"text": "é ü 漢字 \U0001f600", "quoted": 'say "hi"\\', "ctl": "a\nb\t\x00\x1f"},
    {"when": datetime.datetime(2024, 1, 2, 3, 4, 5, 6), "id": uuid.UUID(int=7),
     "set": {1}, "tuple": (1, 2), "bytes": b"raw"},
    {},
]


@pytest.mark.parametrize("message", MESSAGES)
def test_a_wrapped_body_is_what_json_dumps_of_the_envelope_gives(message):
    inner = jsonutils.dumps(message)
    expected = json.dumps({"oslo.version": "2.0", "oslo.message": inner}).encode("utf-8")
    assert encode(message, LIMIT) == expected


@pytest.mark.parametrize("message", MESSAGES)
def test_an_unwrapped_body_is_what_jsonutils_dumps_gives(message):
    assert encode(message, LIMIT, wrap=False) == jsonutils.dumps(message).encode("utf-8")


def test_encoding_twice_gives_the_same_bytes():
    # One encoder serves every message: nothing of one is left in the next.
    assert encode(MESSAGES[2], LIMIT) == encode(MESSAGES[2], LIMIT)


def test_a_value_json_cannot_take_is_an_invalid_message():
    circular: dict[str, object] = {}
    circular["self"] = circular
    with pytest.raises(InvalidMessage, match="cannot be encoded as JSON"):
        encode({"x": circular}, LIMIT, what="cast 'x'")


def test_a_body_over_the_limit_is_an_invalid_message():
    with pytest.raises(InvalidMessage, match="over the limit"):
        encode({"x": "y" * 100}, 50)
