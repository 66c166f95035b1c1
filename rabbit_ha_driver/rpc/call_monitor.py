"""Call-monitor heartbeats: what a server sends while a monitored call runs.

A caller that asked for call monitoring (oslo.messaging's
``call_monitor_timeout``) waits for a heartbeat at least that often instead
of only for its reply. :func:`monitor_call` sends one every half of that
timeout on a thread of its own until the function it returns is called.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from rabbit_ha_driver.rpc.incoming import RpcIncomingMessage

# The server's lines: operators and tests filter on its logger.
LOG = logging.getLogger("rabbit_ha_driver.rpc.server")


def monitor_call(incoming: RpcIncomingMessage) -> Callable[[], None]:
    """Send call-monitor heartbeats every half monitor timeout until stopped."""
    timeout = incoming.client_timeout
    if not timeout or not incoming.request.wants_reply:
        return lambda: None
    interval = timeout / 2
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval):
            try:
                incoming.heartbeat()
            except Exception as error:
                LOG.debug("call-monitor heartbeat for %s failed: %s; stopping them",
                          incoming.msg_id, error)
                return

    threading.Thread(target=beat, daemon=True, name=f"rpc-monitor-{incoming.msg_id}").start()
    return done.set
