"""The liveness soak at the library's defaults; see :mod:`.run`."""
