"""Directly encoded publish and ack frames are byte for byte what py-amqp writes."""

from __future__ import annotations

import amqp
import pytest
from amqp import spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from rabbit_ha_driver.connection import _frames as frames


class _Connection:
    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))


def py_amqp_frames(frame_max, channel, sig, argsig, args, content=None) -> bytes:
    transport = _Transport()
    write = frame_writer(_Connection(frame_max), transport)
    write(1, channel, sig, dumps(argsig, args), content)
    return b"".join(transport.written)


PROPERTY_SETS = [
    {},
    {"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 1},
    {"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2,
     "expiration": "59999", "message_id": "rha1-abcdef01.42"},
    {"priority": 5, "correlation_id": "c-1", "reply_to": "reply_0123", "type": "t",
     "user_id": "guest", "app_id": "nova", "cluster_id": "x"},
    {"application_headers": {"a": 1, "b": "two", "c": True}, "delivery_mode": 2},
]


@pytest.mark.parametrize("properties", PROPERTY_SETS)
@pytest.mark.parametrize("mandatory", [True, False])
def test_publish_frames_match_py_amqp(properties, mandatory):
    body = b'{"oslo.version": "2.0", "oslo.message": "{}"}'
    expected = py_amqp_frames(131072, 3, spec.Basic.Publish, "Bssbb",
                              (0, "openstack", "topic.server", mandatory, False),
                              amqp.Message(body, **properties))
    assert frames.publish(3, 131072, "openstack", "topic.server", body, properties,
                          mandatory=mandatory) == expected


def test_headers_may_be_given_as_headers():
    body = b"x"
    with_headers = frames.publish(1, 4096, "", "q", body, {"headers": {"k": "v"}})
    assert with_headers == frames.publish(1, 4096, "", "q", body,
                                          {"application_headers": {"k": "v"}})
    assert with_headers != frames.publish(1, 4096, "", "q", body, {})


def test_a_large_body_is_split_into_frames_of_frame_max():
    body = bytes(range(256)) * 40  # 10240 bytes, frame_max 4096: three body frames
    expected = py_amqp_frames(4096, 1, spec.Basic.Publish, "Bssbb", (0, "", "q", True, False),
                              amqp.Message(body, content_type="application/octet-stream"))
    got = frames.publish(1, 4096, "", "q", body, {"content_type": "application/octet-stream"},
                         mandatory=True)
    assert got == expected
    assert got.count(b"\xce") >= 5  # method, header and three body frames


def test_an_empty_body_has_no_body_frame():
    expected = py_amqp_frames(131072, 1, spec.Basic.Publish, "Bssbb", (0, "", "q", False, False),
                              amqp.Message(b""))
    assert frames.publish(1, 131072, "", "q", b"", {}) == expected


def test_unknown_properties_and_timestamps_are_left_to_py_amqp():
    assert frames.publish(1, 131072, "", "q", b"x", {"not_a_property": 1}) is None
    assert frames.publish(1, 131072, "", "q", b"x", {"timestamp": 1700000000}) is None


def test_a_short_string_over_255_bytes_is_refused():
    with pytest.raises(ValueError, match="longer than 255"):
        frames.publish(1, 131072, "", "q" * 256, b"x", {})


@pytest.mark.parametrize("tag", [1, 255, 2 ** 40])
@pytest.mark.parametrize("multiple", [False, True])
def test_ack_frame_matches_py_amqp(tag, multiple):
    expected = py_amqp_frames(131072, 7, spec.Basic.Ack, "Lb", (tag, multiple))
    assert frames.ack(7, tag, multiple) == expected
