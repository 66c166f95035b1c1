"""The HA connection layer: recovery, failover, liveness, topology.

The layers above (RPC, adapters) import the connection's names from here, never
from its modules (``tests/unit/test_layers.py``).
"""

from rabbit_ha_driver.connection._confirms import Outcome, Pending
from rabbit_ha_driver.connection._ha_connection import Connection, State, default_connection_name
from rabbit_ha_driver.connection._retry import Backoff, Deadline

__all__ = [
    "Backoff",
    "Connection",
    "Deadline",
    "Outcome",
    "Pending",
    "State",
    "default_connection_name",
]
