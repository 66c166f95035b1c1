"""rabbit_ha_driver: a RabbitMQ RPC transport that never goes silently deaf.

Importing this package imports neither eventlet nor oslo.messaging, and
monkey-patches nothing.
"""

from rabbit_ha_driver.exceptions import (
    AuthenticationError,
    ChannelDead,
    ConfigurationError,
    ConnectionLost,
    ConsumerCancelled,
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
from rabbit_ha_driver.settings import Host, Settings, from_conf, from_url

__all__ = [
    "AuthenticationError",
    "ChannelDead",
    "ConfigurationError",
    "ConnectionLost",
    "ConsumerCancelled",
    "Host",
    "InvalidMessage",
    "IrrecoverableError",
    "MessagingTimeout",
    "PublishNacked",
    "RabbitHAError",
    "RecoverableError",
    "RemoteError",
    "Settings",
    "TLSError",
    "Unroutable",
    "from_conf",
    "from_url",
    "list_opts",
    "register_opts",
]
