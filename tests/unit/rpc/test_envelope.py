"""The wire format: envelope, JSON only, size limits, requests, replies, failures.

The wire format may not change by a byte: these tests, and oslo.messaging's
own codec in them, are its judge (:mod:`rabbit_ha_driver.rpc.wire`,
:mod:`~rabbit_ha_driver.rpc.messages`, :mod:`~rabbit_ha_driver.rpc.failures`).
"""

from __future__ import annotations

import datetime
import json
import pickle
import sys
import uuid

import pytest
from oslo_messaging._drivers import common as oslo_common

from rabbit_ha_driver.exceptions import BadRequest, InvalidMessage, RemoteError
from rabbit_ha_driver.rpc import failures, messages, wire

JSON = {"content_type": "application/json", "content_encoding": "utf-8", "headers": {}}
LIMIT = 1 << 20


def decode(body, **overrides):
    kwargs = {**JSON, "max_size": LIMIT, **overrides}
    return wire.decode(body, **kwargs)


# -- envelope ----------------------------------------------------------------------


def test_body_is_the_2_0_envelope_with_the_message_as_a_json_string():
    body = wire.encode({"method": "echo", "args": {"x": 1}}, LIMIT)
    outer = json.loads(body)
    assert outer["oslo.version"] == "2.0"
    assert isinstance(outer["oslo.message"], str)
    assert json.loads(outer["oslo.message"]) == {"method": "echo", "args": {"x": 1}}


def test_oslo_messaging_reads_ours_and_we_read_theirs():
    ours = wire.encode({"a": [1, "b"]}, LIMIT)
    assert oslo_common.deserialize_msg(json.loads(ours)) == {"a": [1, "b"]}
    theirs = json.dumps(oslo_common.serialize_msg({"c": {"d": None}})).encode()
    assert decode(theirs) == {"c": {"d": None}}


def test_bodies_decoded_by_py_amqp_arrive_as_text():
    assert decode(wire.encode({"k": "é"}, LIMIT).decode()) == {"k": "é"}


def test_a_bare_json_object_is_a_version_1_0_message():
    assert decode(b'{"event_type": "x", "payload": 1}') == {"event_type": "x", "payload": 1}


@pytest.mark.parametrize("content_type", [
    "application/x-python-serialize", "application/x-yaml", "application/x-msgpack",
    "text/plain", None, "",
])
def test_anything_but_json_is_refused_before_it_is_parsed(content_type):
    body = pickle.dumps({"method": "echo"})
    with pytest.raises(InvalidMessage, match="content type"):
        decode(body, content_type=content_type)


def test_json_with_parameters_is_accepted():
    assert decode(b'{"a": 1}', content_type="application/json; charset=utf-8") == {"a": 1}


def test_other_encodings_and_compression_are_refused():
    with pytest.raises(InvalidMessage, match="encoding"):
        decode(b'{"a": 1}', content_encoding="binary")
    with pytest.raises(InvalidMessage, match="compress"):
        decode(b'{"a": 1}', headers={"compression": "application/x-gzip"})


@pytest.mark.parametrize("body, reason", [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"oslo.version": "2.0"}', "needs both"),
    (b'{"oslo.message": "{}"}', "needs both"),
    (b'{"oslo.version": "3.0", "oslo.message": "{}"}', "not supported"),
    (b'{"oslo.version": "2.1", "oslo.message": "{}"}', "not supported"),
    (b'{"oslo.version": 2, "oslo.message": "{}"}', "not supported"),
    (b'{"oslo.version": "2.0", "oslo.message": {"a": 1}}', "not a JSON string"),
    (b'{"oslo.version": "2.0", "oslo.message": "nope"}', "not valid JSON"),
    (b'{"oslo.version": "2.0", "oslo.message": "[1]"}', "not an object"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply|not valid JSON"),
])
def test_malformed_bodies_are_refused_with_the_reason(body, reason):
    with pytest.raises(InvalidMessage, match=reason):
        decode(body)


def test_size_limit_applies_to_sending_and_receiving():
    message = {"blob": "x" * 2000}
    with pytest.raises(InvalidMessage, match="over the limit of 1024 bytes"):
        wire.encode(message, 1024, "request")
    body = wire.encode(message, LIMIT)
    with pytest.raises(InvalidMessage, match="rpc_max_message_size"):
        decode(body, max_size=1024)
    with pytest.raises(InvalidMessage, match="rpc_max_message_size"):
        decode(body.decode(), max_size=1024)


def test_size_of_decoded_text_counts_bytes_not_characters():
    text = "é" * 600  # 1200 bytes in UTF-8
    assert wire.body_size(text, 1024) == 1200
    assert wire.body_size(text, 100_000) == 600  # far from the limit: not counted
    assert wire.body_size(b"abc", 10) == 3


def test_values_json_lacks_are_converted_like_oslo_serialization():
    when = datetime.datetime(2024, 5, 1, 12, 0, 0, 123456)
    ident = uuid.UUID(int=1)
    body = wire.encode({"when": when, "id": ident, "set": {1}}, LIMIT)
    assert decode(body) == {"when": "2024-05-01T12:00:00.123456",
                            "id": str(ident), "set": [1]}


def test_values_that_are_not_json_are_refused_by_name():
    with pytest.raises(InvalidMessage, match="object is not JSON serializable"):
        wire.encode({"x": object()}, LIMIT)


# -- requests ----------------------------------------------------------------------


def test_call_request_has_oslo_messaging_keys():
    message = messages.build_request({"user": "u", "roles": ["a"]}, "echo", {"x": 1},
                                     msg_id="m1", reply_q="reply_q1", call_monitor_timeout=4,
                                     namespace="ns", version="1.2")
    assert message["method"] == "echo" and message["args"] == {"x": 1}
    assert message["_msg_id"] == "m1" and message["_reply_q"] == "reply_q1"
    assert message["_timeout"] == 4
    assert message["_context_user"] == "u" and message["_context_roles"] == ["a"]
    assert message["namespace"] == "ns" and message["version"] == "1.2"
    assert len(message["_unique_id"]) == 32
    request = messages.parse_request(message)
    assert request.wants_reply
    assert request.context == {"user": "u", "roles": ["a"]}
    assert request.client_timeout == 4.0
    assert request.as_message() == {"method": "echo", "args": {"x": 1},
                                    "namespace": "ns", "version": "1.2"}


def test_cast_request_has_no_reply_keys():
    message = messages.build_request(None, "ping", {})
    assert "_msg_id" not in message and "_reply_q" not in message
    assert not messages.parse_request(message).wants_reply


def test_context_objects_with_to_dict_are_accepted():
    class Ctx:
        def to_dict(self):
            return {"request_id": "req-1"}

    assert messages.build_request(Ctx(), "m", {})["_context_request_id"] == "req-1"
    with pytest.raises(TypeError):
        messages.build_request(42, "m", {})


@pytest.mark.parametrize("message, reason", [
    ({"args": {}}, "no method"),
    ({"method": "", "args": {}}, "no method"),
    ({"method": 3, "args": {}}, "no method"),
    ({"method": "m", "args": [1]}, "not an object"),
    ({"method": "m", "args": {"x": 1}, "_timeout": "soon"}, "not a number"),
    ({"method": "m", "args": {}, "version": 1.1}, "not a string"),
])
def test_bad_requests_say_whom_to_tell(message, reason):
    message = {**message, "_msg_id": "m1", "_reply_q": "reply_1"}
    with pytest.raises(BadRequest, match=reason) as info:
        messages.parse_request(message)
    assert (info.value.msg_id, info.value.reply_q) == ("m1", "reply_1")


def test_bad_request_with_a_bad_msg_id_has_nobody_to_tell():
    with pytest.raises(BadRequest) as info:
        messages.parse_request({"method": "m", "_msg_id": 5})
    assert info.value.msg_id is None


def test_ids_of_a_body_too_large_to_decode_can_still_be_found():
    message = messages.build_request({"note": '"_msg_id": "fake"'}, "m",
                                     {"text": '\\"_reply_q\\": \\"evil\\"'},
                                     msg_id="abc123", reply_q="reply_xyz")
    body = wire.encode(message, LIMIT)
    assert wire.sniff_ids(body) == ("abc123", "reply_xyz")
    assert wire.sniff_ids(body.decode()) == ("abc123", "reply_xyz")
    assert wire.sniff_ids(b'{"a": 1}') == (None, None)


# -- replies and failures -----------------------------------------------------------


def test_reply_round_trip():
    reply = messages.parse_reply(messages.build_reply("m1", {"ok": True}))
    assert (reply.msg_id, reply.result, reply.failure, reply.ending) == ("m1", {"ok": True}, None, True)
    assert not reply.is_heartbeat
    beat = messages.parse_reply(messages.build_reply("m1", None, None, ending=False))
    assert beat.is_heartbeat


def test_reply_without_msg_id_is_invalid():
    with pytest.raises(InvalidMessage):
        messages.parse_reply({"result": 1})


def test_reply_without_ending_is_final():
    assert messages.parse_reply({"_msg_id": "m", "result": 3}).ending


class AppError(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.kwargs = {"code": code}


def test_failure_has_oslo_messagings_shape():
    try:
        raise AppError("broken", 7)
    except AppError as error:
        data = json.loads(failures.encode_failure(error))
        from_exc_info = json.loads(failures.encode_failure(sys.exc_info()))  # type: ignore[arg-type]
    assert data["class"] == "AppError"
    assert data["module"] == __name__
    assert data["message"] == "('broken', 7)"
    assert data["args"] == ["broken", 7] and data["kwargs"] == {"code": 7}
    assert "raise AppError" in "".join(data["tb"])
    assert from_exc_info["class"] == "AppError"


def test_oslo_messaging_turns_our_builtin_failures_into_the_builtin():
    failure = failures.encode_failure(ValueError("bad value"))
    rebuilt = oslo_common.deserialize_remote_exception(failure, [])
    assert isinstance(rebuilt, ValueError)
    assert "bad value" in str(rebuilt)


def test_their_failures_become_remote_errors_without_imports():
    try:
        raise KeyError("k")
    except KeyError:
        theirs = oslo_common.serialize_remote_exception(sys.exc_info())
    error = failures.decode_failure(theirs)
    assert isinstance(error, RemoteError)
    assert error.exc_type == "KeyError" and error.value == "'k'"
    assert "raise KeyError" in error.traceback
    app = failures.decode_failure(failures.encode_failure(AppError("x", 1)))
    assert app.exc_type == f"{__name__}.AppError"


def test_remote_errors_passed_on_keep_their_type():
    nested = RemoteError("mod.Boom", "inner text")
    data = json.loads(failures.encode_failure(nested))
    assert (data["class"], data["message"]) == ("mod.Boom", "inner text")


def test_unserialisable_exception_arguments_become_text():
    data = json.loads(failures.encode_failure(ValueError(object())))
    assert data["args"][0].startswith("<object object")


@pytest.mark.parametrize("failure", ["not json", "[1]", {"class": 5}, 17])
def test_garbled_failures_still_give_a_remote_error(failure):
    error = failures.decode_failure(failure)
    assert isinstance(error, RemoteError)
    assert error.exc_type == "UnknownError"


# -- notifications ----------------------------------------------------------------------


def test_notification_matches_oslo_messagings_fields():
    message = messages.build_notification({"user": "u"}, "compute.host1", "instance.create",
                                          "warning", {"id": 1})
    assert message["priority"] == "WARN"
    assert set(message) >= {"message_id", "publisher_id", "event_type", "priority",
                            "payload", "timestamp", "_unique_id", "_context_user"}
    datetime.datetime.strptime(message["timestamp"], "%Y-%m-%d %H:%M:%S.%f")
    note = messages.parse_notification(message)
    assert (note.priority, note.event_type, note.payload) == ("warn", "instance.create", {"id": 1})
    assert note.metadata == {"message_id": message["message_id"], "timestamp": message["timestamp"]}


def test_unknown_priorities_are_refused():
    with pytest.raises(ValueError):
        messages.normalize_priority("loud")
    with pytest.raises(InvalidMessage):
        messages.parse_notification({"publisher_id": "p", "event_type": "e", "priority": "LOUD"})


@pytest.mark.parametrize("message", [
    {"method": "echo", "args": {"x": 1}},
    {"k": "é ü 漢字 \U0001f600", "q": 'say "hi"\\', "nl": "a\nb\t\x00\x1f"},
    {},
    {"lone": "\ud800", "escaped quote": '\\"', "x" * 3: "\\\\" * 3 + '"' * 3},
])
def test_envelope_is_byte_for_byte_json_dumps_of_the_envelope_dict(message):
    inner = json.dumps(message)
    expected = json.dumps({"oslo.version": "2.0", "oslo.message": inner}).encode("utf-8")
    assert wire.encode(message, LIMIT) == expected
