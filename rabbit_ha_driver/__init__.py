"""rabbit_ha_driver: a RabbitMQ RPC transport that never goes silently deaf.

Importing this package imports neither eventlet nor oslo.messaging, and
monkey-patches nothing.
"""

from rabbit_ha_driver.connection import Backoff, Connection, Deadline, State
from rabbit_ha_driver.events import EventBus
from rabbit_ha_driver.exceptions import (
    AuthenticationError,
    ChannelDead,
    ConfigurationError,
    ConnectionLost,
    ConsumerCancelled,
    FeatureDenied,
    InvalidMessage,
    IrrecoverableError,
    MessagingTimeout,
    PublishNacked,
    RabbitHAError,
    RecoverableError,
    RemoteError,
    TLSError,
    Unroutable,
)
from rabbit_ha_driver.options import list_opts, register_opts
from rabbit_ha_driver.rpc import (
    NotificationServer,
    Notifier,
    RPCClient,
    RPCServer,
    RPCTransport,
    Target,
)
from rabbit_ha_driver.settings import Host, Settings, from_conf, from_url

__all__ = [
    "AuthenticationError",
    "Backoff",
    "ChannelDead",
    "ConfigurationError",
    "Connection",
    "ConnectionLost",
    "ConsumerCancelled",
    "Deadline",
    "EventBus",
    "FeatureDenied",
    "Host",
    "InvalidMessage",
    "IrrecoverableError",
    "MessagingTimeout",
    "NotificationServer",
    "Notifier",
    "PublishNacked",
    "RPCClient",
    "RPCServer",
    "RPCTransport",
    "RabbitHAError",
    "RecoverableError",
    "RemoteError",
    "Settings",
    "State",
    "TLSError",
    "Target",
    "Unroutable",
    "from_conf",
    "from_url",
    "list_opts",
    "register_opts",
]
