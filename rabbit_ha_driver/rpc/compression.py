"""kombu compression, as oslo.messaging senders use it (``kombu_compression``).

How this works. kombu compresses a serialised body and says so in the
``compression`` header: ``application/x-gzip`` (zlib data, despite the name)
or ``application/x-bz2``. kombu's own receiving side decompresses whatever
arrives, with no bound, so a small message can expand to gigabytes (a
compression bomb). The library therefore receives compressed bodies as they
are (:mod:`rabbit_ha_driver.connection._inbound`) and decompresses them here,
in steps, never producing more than ``rpc_max_message_size`` bytes: a body
that would expand beyond it is refused as
:class:`~rabbit_ha_driver.exceptions.InvalidMessage` like any other bad
message (logged, rejected, the server keeps serving).
"""

from __future__ import annotations

import bz2
import zlib
from typing import Any

from rabbit_ha_driver.exceptions import InvalidMessage

#: ``kombu_compression`` values and the header value kombu writes for each.
#: oslo.messaging documents ``bz2``, which kombu does not know (its names are
#: ``bzip2`` and ``bzip``); both are accepted here.
HEADERS = {"gzip": "application/x-gzip", "zlib": "application/x-gzip",
           "bz2": "application/x-bz2", "bzip2": "application/x-bz2"}
#: Header values (and kombu's aliases) and the algorithm each names.
_ALGORITHMS = {
    "application/x-gzip": "zlib", "gzip": "zlib", "zlib": "zlib",
    "application/x-bz2": "bz2", "bz2": "bz2", "bzip2": "bz2", "bzip": "bz2",
}


def compress(body: bytes, method: str) -> tuple[bytes, str]:
    """``(compressed body, compression header)`` for ``kombu_compression = method``."""
    header = HEADERS.get(method)
    if header == HEADERS["gzip"]:
        return zlib.compress(body), header
    if header == HEADERS["bz2"]:
        return bz2.compress(body), header
    raise ValueError(f"unknown compression {method!r}; expected one of {', '.join(HEADERS)}")


def decompress(body: Any, header: str, limit: int) -> bytes:
    """The decompressed body, at most ``limit`` bytes; raises InvalidMessage.

    ``body`` may be text: py-amqp decodes every body as UTF-8 when it can,
    so a compressed body that happens to be valid UTF-8 arrives as ``str``
    and is encoded back to the same bytes.
    """
    algorithm = _ALGORITHMS.get(str(header).strip().lower())
    if algorithm is None:
        raise InvalidMessage(f"compressed message ({header!r}) refused: only gzip and bz2 "
                             "(kombu_compression) are accepted")
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    try:
        if algorithm == "zlib":
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, limit + 1)
            finished = inflater.eof
        else:
            unpacker = bz2.BZ2Decompressor()
            out = unpacker.decompress(data, max_length=limit + 1)
            finished = unpacker.eof
    except (zlib.error, OSError, ValueError, EOFError) as error:
        raise InvalidMessage(f"compressed message ({header!r}) is corrupt: {error}") from error
    if len(out) > limit:
        raise InvalidMessage(
            f"compressed message ({header!r}) of {len(data)} bytes expands beyond the limit "
            f"of {limit} bytes (rpc_max_message_size); refused without expanding it further")
    if not finished:
        raise InvalidMessage(f"compressed message ({header!r}) is truncated")
    return out
