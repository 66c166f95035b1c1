"""Deliveries keep their ``compression`` header aside, so kombu never expands a body."""

from __future__ import annotations

import zlib

from amqp.basic_message import Message as AmqpDelivery

from rabbit_ha_driver.connection._inbound import HEADER, AMQPMessage, MemoryMessage


def test_a_py_amqp_delivery_keeps_its_body_as_sent():
    body = zlib.compress(b"payload")
    raw = AmqpDelivery(body, content_type="application/json", content_encoding="utf-8",
                       application_headers={HEADER: "zlib", "trace": "t1"})
    raw.delivery_info = {"delivery_tag": 7, "redelivered": False, "exchange": "", "routing_key": "q"}
    msg = AMQPMessage(raw)
    assert msg.body == body
    assert msg.compression == "zlib"
    assert msg.headers == {"trace": "t1"}
    assert msg.delivery_tag == 7 and msg.content_type == "application/json"


def test_a_py_amqp_delivery_without_headers_has_no_compression():
    raw = AmqpDelivery(b"plain")
    raw.delivery_info = {"delivery_tag": 1}
    msg = AMQPMessage(raw)
    assert msg.compression is None and msg.headers == {} and msg.body == b"plain"


class PlainChannel:
    """What kombu's in-process message asks of its channel: a body codec (here: none)."""

    def decode_body(self, body: str, encoding: str | None) -> str:
        return body

    def encode_body(self, body: str, encoding: str | None) -> tuple[str, str | None]:
        return body, encoding


def payload(headers: dict[str, str]) -> dict[str, object]:
    return {"body": "x\u0153", "content-type": "application/json", "content-encoding": "utf-8",
            "headers": headers, "properties": {"delivery_tag": 3, "delivery_info": {}}}


def test_a_memory_delivery_puts_its_header_back_when_requeued():
    raw = payload({HEADER: "zlib", "trace": "t1"})
    msg = MemoryMessage(raw, channel=PlainChannel())
    assert msg.compression == "zlib" and msg.headers == {"trace": "t1"}
    assert msg.serializable()["headers"] == {"trace": "t1", HEADER: "zlib"}
    assert raw["headers"] == {HEADER: "zlib", "trace": "t1"}  # what came in is left as it came


def test_a_memory_delivery_without_compression_is_requeued_unchanged():
    msg = MemoryMessage(payload({"trace": "t1"}), channel=PlainChannel())
    assert msg.compression is None
    assert msg.serializable()["headers"] == {"trace": "t1"}
