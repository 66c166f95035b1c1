"""The HA connection layer: recovery, failover, liveness, topology."""

from rabbit_ha_driver.connection.ha_connection import Connection, State
from rabbit_ha_driver.connection.retry import Backoff, Deadline

__all__ = ["Backoff", "Connection", "Deadline", "State"]
