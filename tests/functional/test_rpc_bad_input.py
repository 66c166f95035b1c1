"""Bad input on the wire: an RPC server on the real cluster refuses it and keeps serving.

Raw messages are published straight to the server's topic, as a broken or
hostile peer would: pickle and YAML bodies built so that deserialising them
would create a marker file, malformed JSON, a malformed envelope, a request
without a method, an unknown method, wrong arguments, and a body over
``rpc_max_message_size``. Each must be rejected without requeue (logged once,
never redelivered: the queue ends empty), the marker file must never appear,
a request that names its caller (``_msg_id`` and ``_reply_q``) must get a
failure reply at once instead of a timeout, and an ordinary call must succeed
afterwards.

How it works: the test plays the caller by hand. It declares its own reply
queue, publishes each raw request with ``_reply_q`` pointing at it, and
decodes what comes back with the library's envelope functions.
"""

from __future__ import annotations

import json
import logging
import pickle
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.connection import Connection, Deadline
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import RPCClient, RPCServer, envelope

from .helpers.faults import OWN_QUEUES_DURABLE
from .helpers.probes import unique, wait_for

MAX_SIZE = 64 * 1024


class Endpoint:
    def echo(self, ctxt: dict[str, Any], text: str) -> str:
        return text


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the file is the evidence."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


class Caller:
    """A hand-made RPC caller: a reply queue of its own and raw publishes."""

    def __init__(self, url: str, topic: str) -> None:
        self.conn = Connection(from_url(url), name="bad-input-caller")
        self.topic = topic
        self.reply_q = envelope.reply_queue_name(from_url())
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.received: dict[str, envelope.Reply] = {}
        self.conn.declare_queue(self.reply_q, durable=OWN_QUEUES_DURABLE)
        self.conn.consume(self.reply_q, self._on_reply)

    def _on_reply(self, message: Any) -> None:
        self.conn.ack(message)
        self.replies.put(envelope.decode(message.body, content_type=message.content_type,
                                         content_encoding=message.content_encoding,
                                         headers=message.headers, max_size=1 << 30))

    def publish(self, body: bytes, content_type: str = "application/json") -> None:
        self.conn.publish(body, envelope.DEFAULT_EXCHANGE, self.topic,
                          properties={"content_type": content_type, "content_encoding": "utf-8"},
                          deadline=Deadline.after(10))

    def request(self, message: dict[str, Any], msg_id: str) -> bytes:
        """A well-formed 2.0 envelope around ``message`` that names this caller."""
        inner = {**message, "_msg_id": msg_id, "_reply_q": self.reply_q,
                 "_unique_id": envelope.new_id()}
        return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()

    def failure_for(self, msg_id: str, timeout: float = 5.0) -> exc.RemoteError:
        """The failure the server replied to ``msg_id`` with."""
        deadline = time.monotonic() + timeout
        while msg_id not in self.received and time.monotonic() < deadline:
            self.conn.drain_events(0.1)
            while not self.replies.empty():
                reply = envelope.parse_reply(self.replies.get())
                self.received[reply.msg_id] = reply
        answer = self.received.get(msg_id)
        assert answer is not None, f"no reply to {msg_id} within {timeout}s"
        assert answer.failure is not None, f"{msg_id} got a result: {answer}"
        return answer.failure

    def close(self) -> None:
        self.conn.close()


def _rejections(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rejecting message" in r.getMessage()]


def test_bad_messages_are_rejected_logged_answered_and_the_server_keeps_serving(
        cluster, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="rabbit_ha_driver")
    topic = unique("bad-input")
    url = cluster.url()
    settings = from_url(url, rpc_max_message_size=MAX_SIZE, connection_name="bad-input")
    server = RPCServer(settings, topic, "bad-input-server", [Endpoint()], start_timeout=10.0)
    server.start()
    caller = Caller(url, topic)
    client = RPCClient(from_url(url), topic, timeout=10.0)
    pickle_marker, yaml_marker = tmp_path / "unpickled", tmp_path / "yaml-loaded"
    try:
        assert client.call({}, "echo", text="before") == "before"

        # No caller can be found in these: rejected and logged only.
        caller.publish(pickle.dumps(_CreatesFile(pickle_marker)), "application/x-python-serialize")
        caller.publish(f"!!python/object/apply:builtins.open ['{yaml_marker}', 'w']\n".encode(),
                       "application/x-yaml")
        caller.publish(b'{"oslo.version": "2.0", "oslo.message": "{\\"method\\": ', "application/json")
        caller.publish(json.dumps({"oslo.version": "2.0"}).encode())
        silent = 4

        # These name their caller, who gets a typed failure at once.
        answered: dict[str, str] = {}
        no_method = envelope.new_id()
        caller.publish(caller.request({"args": {}}, no_method))
        answered[no_method] = "no method"
        huge = envelope.new_id()
        caller.publish(caller.request({"method": "echo", "args": {"text": "x" * (2 * MAX_SIZE)}},
                                      huge))
        answered[huge] = "oversized"
        unknown = envelope.new_id()
        caller.publish(caller.request({"method": "no_such_method", "args": {}}, unknown))
        wrong_args = envelope.new_id()
        caller.publish(caller.request({"method": "echo", "args": {"txet": 1}}, wrong_args))

        for msg_id, what in answered.items():
            failure = caller.failure_for(msg_id)
            print(f"{what}: {failure.exc_type}: {failure.value}")
            assert "InvalidMessage" in failure.exc_type or "BadRequest" in failure.exc_type
        failure = caller.failure_for(unknown)
        print(f"unknown method: {failure.exc_type}: {failure.value}")
        assert failure.exc_type.endswith("NoSuchMethod") and "no_such_method" in failure.value
        failure = caller.failure_for(wrong_args)
        print(f"wrong arguments: {failure.exc_type}: {failure.value}")
        assert failure.exc_type.endswith("InvalidArguments") and "'text'" in failure.value

        # The same errors through the library's own client are typed too.
        with pytest.raises(exc.RemoteError) as info:
            client.call({}, "no_such_method")
        assert info.value.exc_type.endswith("NoSuchMethod")
        with pytest.raises(exc.InvalidMessage):
            client.call({}, "echo", text="x" * (20 * 1024 * 1024))

        # Rejected once each (a requeue would log them again and again) and
        # gone from the queue.
        expected = silent + len(answered)
        assert wait_for(lambda: len(_rejections(caplog)) >= expected, 5)
        time.sleep(1.0)
        rejections = _rejections(caplog)
        for line in rejections:
            print("logged:", line[line.index("rejecting"):][:200])
        assert len(rejections) == expected
        assert any("application/x-python-serialize" in line for line in rejections)
        assert any("application/x-yaml" in line for line in rejections)
        assert any("not valid JSON" in line for line in rejections)
        assert any("malformed envelope" in line for line in rejections)
        assert any("rpc_max_message_size" in line for line in rejections)
        info_q = wait_for(lambda: (cluster.queue_info(topic) or {}).get("messages") == 0
                          and cluster.queue_info(topic), 10, interval=0.5)
        assert info_q and info_q["messages"] == 0 and info_q.get("messages_unacknowledged", 0) == 0

        assert not pickle_marker.exists() and not yaml_marker.exists()
        assert client.call({}, "echo", text="after") == "after"
    finally:
        client.close()
        caller.close()
        server.stop()
        server.wait(5.0)
