"""What the publish fast path writes for values the RPC layer may be handed."""

from __future__ import annotations

from rabbit_ha_driver.connection import _frames as frames


def _header(data: bytes) -> bytes:
    """The content header frame's payload (the second frame) of encoded publish frames."""
    size = int.from_bytes(data[3:7], "big")
    start = 7 + size + 1
    header_size = int.from_bytes(data[start + 3:start + 7], "big")
    return data[start + 7:start + 7 + header_size]


def test_an_integer_property_is_sent_as_its_text_not_as_nul_bytes():
    as_int = frames.publish(1, 4096, "", "q", b"x", {"message_id": 12})
    as_text = frames.publish(1, 4096, "", "q", b"x", {"message_id": "12"})
    assert as_int == as_text
    assert as_int is not None and b"\x0212" in _header(as_int)
    assert b"\x00" * 12 not in _header(as_int)


def test_a_str_body_is_sent_as_utf8_and_says_so():
    text = frames.publish(1, 4096, "", "q", "h\u00e9", {"content_type": "text/plain"})
    said = frames.publish(1, 4096, "", "q", "h\u00e9".encode(),
                          {"content_type": "text/plain", "content_encoding": "utf-8"})
    assert text == said
    kept = frames.publish(1, 4096, "", "q", "x", {"content_encoding": "utf-8"})
    assert kept == frames.publish(1, 4096, "", "q", b"x", {"content_encoding": "utf-8"})
