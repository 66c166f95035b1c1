"""Optional dependencies: found without importing them, or a clear error naming the extra.

eventlet is an extra (``pip install rabbit_ha_driver[eventlet]``): without it
everything works but the two things that are eventlet by definition, the
``eventlet`` executor and the ``green`` heartbeat runner. Choosing either
without eventlet installed stops at start-up with a
:class:`~rabbit_ha_driver.exceptions.ConfigurationError` naming the option
and the extra. The check looks for the package without importing it, so it
never imports (let alone monkey-patches) eventlet.
"""

from __future__ import annotations

import importlib.util

from rabbit_ha_driver.exceptions import ConfigurationError

EVENTLET_EXTRA = "rabbit_ha_driver[eventlet]"


def installed(package: str) -> bool:
    """True when ``package`` can be imported; never imports it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent missing, or a broken entry in sys.modules
        return False


def require_eventlet(option: str, value: str) -> None:
    """Raise ConfigurationError naming ``option`` when eventlet is not installed."""
    if not installed("eventlet"):
        raise ConfigurationError(
            option, value, f"needs eventlet, which is not installed: pip install '{EVENTLET_EXTRA}' "
            "(or choose the threading executor / the native or auto heartbeat runner, "
            "which need no eventlet)")
