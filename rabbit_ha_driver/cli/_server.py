"""The private test server ``check`` and ``drill`` call, and the cleanup of a command's queues."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.cli._common import PROG
from rabbit_ha_driver.settings import Settings

LOG = logging.getLogger(__name__)


class _PingEndpoint:
    """What ``check`` and ``drill`` call."""

    def ping(self, ctxt: dict[str, Any], n: int = 0) -> int:
        return n


def private_topic(command: str) -> str:
    """A topic nobody else uses, named after the command."""
    return f"{PROG}-{command}-{uuid.uuid4().hex[:8]}"


@contextmanager
def ping_server(settings: Settings, topic: str, timeout: float) -> Iterator[None]:
    """An RPC server serving ``ping`` on ``topic`` as server ``drill``; queues removed after."""
    from rabbit_ha_driver.rpc import RPCServer

    server = RPCServer(settings, topic, "drill", [_PingEndpoint()], start_timeout=timeout)
    server.start()
    try:
        yield
    finally:
        server.stop()
        server.wait(timeout)
        remove_queues(settings, (topic, f"{topic}.drill"), timeout)


def remove_queues(settings: Settings, names: Sequence[str], timeout: float) -> None:
    """Delete a command's shared queues so a real broker is left as it was."""
    from rabbit_ha_driver.connection import Connection, Deadline

    conn = Connection(settings, name=f"{PROG}:cleanup")
    deadline = Deadline.after(min(2.0, timeout))
    try:
        for name in names:
            conn.delete_queue(name, deadline=deadline)
    except exc.RabbitHAError as error:
        LOG.info("queues %s not removed: %s", ", ".join(names), error)
    finally:
        conn.close()
