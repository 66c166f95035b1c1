"""The oslo.messaging driver ``rabbit-ha``: oslo.messaging's API on this library.

How this works. oslo.messaging picks a driver by the scheme of the transport
URL, through the ``oslo.messaging.drivers`` entry points; ``rabbit-ha://``
selects :class:`RabbitHADriver`. The name ``rabbit`` stays oslo.messaging's
(stevedore refuses two drivers of one name), so both drivers can be loaded in
one process, e.g. RPC on ``rabbit-ha://`` and notifications on ``rabbit://``.

* :mod:`~rabbit_ha_driver.oslo.policy`: which brokers (the URL's hosts,
  virtual host and query string over ``[rabbit_ha]``) and how long a send may
  take (``timeout`` and ``retry`` with oslo.messaging's meanings); pure
  functions.
* :mod:`~rabbit_ha_driver.oslo.wire`: messages encoded as oslo.messaging's
  rabbit driver encodes them; remote failures decoded by oslo.messaging's
  own code.
* :mod:`~rabbit_ha_driver.oslo.driver`: the driver: sending through the RPC
  layer's publisher and reply queue, listeners on connections of their own,
  oslo.messaging's exceptions at one boundary.
* :mod:`~rabbit_ha_driver.oslo.incoming`: the poll-style listener and the
  incoming messages oslo.messaging's servers handle.

Importing this package imports oslo.messaging; importing
``rabbit_ha_driver`` does not.
"""

from rabbit_ha_driver.oslo.driver import RabbitHADriver
from rabbit_ha_driver.oslo.policy import SCHEME, SendBudget, library_url, send_budget

__all__ = ["SCHEME", "RabbitHADriver", "SendBudget", "library_url", "send_budget"]
