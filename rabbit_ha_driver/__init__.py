"""rabbit_ha_driver: a RabbitMQ RPC transport that never goes silently deaf.

Importing this package imports neither eventlet nor oslo.messaging, and
monkey-patches nothing.
"""

from rabbit_ha_driver.connection import Backoff, Connection, Deadline, State
from rabbit_ha_driver.events import EventBus
from rabbit_ha_driver.exceptions import (
    AuthenticationError,
    BadRequest,
    ChannelDead,
    ClientClosed,
    ConfigurationError,
    ConnectionLost,
    DispatchError,
    FeatureDenied,
    InvalidArguments,
    InvalidMessage,
    IrrecoverableError,
    MessagingTimeout,
    NoSuchMethod,
    PublishNacked,
    RabbitHAError,
    RecoverableError,
    RemoteError,
    TLSError,
    Unroutable,
    UnsupportedVersion,
)
from rabbit_ha_driver.options import from_conf, from_url, list_opts, register_opts
from rabbit_ha_driver.rpc import (
    NotificationServer,
    Notifier,
    Receipt,
    RPCClient,
    RPCServer,
    RPCTransport,
    Target,
)
from rabbit_ha_driver.settings import Host, Settings

__all__ = [
    "AuthenticationError",
    "Backoff",
    "BadRequest",
    "ChannelDead",
    "ClientClosed",
    "ConfigurationError",
    "Connection",
    "ConnectionLost",
    "Deadline",
    "DispatchError",
    "EventBus",
    "FeatureDenied",
    "Host",
    "InvalidArguments",
    "InvalidMessage",
    "IrrecoverableError",
    "MessagingTimeout",
    "NoSuchMethod",
    "NotificationServer",
    "Notifier",
    "PublishNacked",
    "RPCClient",
    "RPCServer",
    "RPCTransport",
    "RabbitHAError",
    "Receipt",
    "RecoverableError",
    "RemoteError",
    "Settings",
    "State",
    "TLSError",
    "Target",
    "Unroutable",
    "UnsupportedVersion",
    "from_conf",
    "from_url",
    "list_opts",
    "register_opts",
]
