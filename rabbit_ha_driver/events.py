"""One stream of state-change events; logging and metrics subscribe to it.

Every change a connection goes through (connecting, connected, lost, retry,
failed over, consumer cancelled, consumer restored, blocked, heartbeat missed,
declared dead...) is one small frozen event object. An :class:`EventBus`
delivers each event to its subscribers in order; a subscriber that raises is
logged and never breaks the connection. :class:`LogSubscriber` turns events
into log lines that name the host and port, never a password.

Import every name from here. They are defined by concept:
:mod:`~rabbit_ha_driver.event_stream` (the :class:`Event` base, the bus and
its subscribers), :mod:`~rabbit_ha_driver.connection_events` (what happens to
a connection) and :mod:`~rabbit_ha_driver.rpc_events` (what happens to calls
and requests).
"""

from __future__ import annotations

from rabbit_ha_driver.connection_events import (
    Blocked,
    ChannelClosedByBroker,
    ChannelRestored,
    Connected,
    ConnectFailed,
    Connecting,
    ConnectionLost,
    ConsumerCancelled,
    ConsumerLost,
    ConsumerRestored,
    DeclaredDead,
    FailedOver,
    HeartbeatMissed,
    Refused,
    RequestDeadlineMissed,
    RetryScheduled,
    RunnerSelected,
    StateChanged,
    TopologyRestored,
    Unblocked,
)
from rabbit_ha_driver.event_stream import Event, EventBus, LogSubscriber, Recorder, Subscriber
from rabbit_ha_driver.rpc_events import (
    CallCompleted,
    CallTimedOut,
    DuplicateRequest,
    RequestResent,
    UnroutableRetry,
)

# In the order the API reference lists them (the base, the connection's life,
# RPC, then the bus), not alphabetical.
__all__ = [  # noqa: RUF022
    "Event",
    "StateChanged",
    "Connecting",
    "Connected",
    "ConnectFailed",
    "ConnectionLost",
    "Refused",
    "RetryScheduled",
    "FailedOver",
    "TopologyRestored",
    "ConsumerCancelled",
    "ConsumerLost",
    "ConsumerRestored",
    "ChannelClosedByBroker",
    "ChannelRestored",
    "Blocked",
    "Unblocked",
    "RequestDeadlineMissed",
    "HeartbeatMissed",
    "DeclaredDead",
    "RunnerSelected",
    "CallCompleted",
    "CallTimedOut",
    "UnroutableRetry",
    "RequestResent",
    "DuplicateRequest",
    "Subscriber",
    "EventBus",
    "LogSubscriber",
    "Recorder",
]
