"""Content-header properties the direct encoder leaves out or leaves to py-amqp."""

from __future__ import annotations

from rabbit_ha_driver.connection import _frames as frames


def test_an_empty_header_table_is_not_sent():
    with_empty = frames.encode_properties({"content_type": "text/plain", "application_headers": {}})
    assert with_empty == frames.encode_properties({"content_type": "text/plain"})


def test_a_header_value_py_amqp_cannot_encode_is_left_to_py_amqp():
    assert frames.encode_properties({"application_headers": {"x": object()}}) is None
    assert frames.publish(1, 131072, "", "q", b"x", {"headers": {"x": object()}}) is None


def test_the_heartbeat_frame_is_type_8_on_channel_0_with_nothing_in_it():
    frame = frames.HEARTBEAT_FRAME
    assert frame[0] == frames.FRAME_HEARTBEAT and frame[1:7] == bytes(6)
    assert frame[-1:] == frames.FRAME_END and len(frame) == 8


def test_a_text_body_goes_out_as_utf8_and_says_so():
    as_text = frames.publish(1, 131072, "", "q", "h\u00e9", {})  # type: ignore[arg-type]
    as_bytes = frames.publish(1, 131072, "", "q", "h\u00e9".encode(), {"content_encoding": "utf-8"})
    assert as_text is not None and as_text == as_bytes
    kept = frames.publish(1, 131072, "", "q", "h\u00e9", {"content_encoding": "x"})  # type: ignore[arg-type]
    assert kept == frames.publish(1, 131072, "", "q", "h\u00e9".encode(), {"content_encoding": "x"})
