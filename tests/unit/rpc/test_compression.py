"""kombu compression: expanded within rpc_max_message_size, sent when configured."""

from __future__ import annotations

import bz2
import json
import zlib

import pytest
from kombu import compression as kombu_compression

from rabbit_ha_driver.exceptions import InvalidMessage
from rabbit_ha_driver.rpc import compression, wire

# Kept small: a freed allocation of several MiB would raise glibc's mmap
# threshold and upset the RSS figures of tests/unit/benchmarks/test_bench.py.
LIMIT = 1 << 16
JSON = {"content_type": "application/json", "content_encoding": "utf-8", "headers": {}}


def wrapped(message: dict) -> bytes:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


@pytest.mark.parametrize(("method", "header"), [("gzip", "application/x-gzip"),
                                                 ("bzip2", "application/x-bz2")])
def test_what_kombu_compresses_is_expanded(method, header):
    body = wrapped({"method": "echo", "args": {"v": "x" * 1000}})
    packed, content_type = kombu_compression.compress(body, method)
    assert content_type == header
    inner = wire.decode(packed, **JSON, max_size=LIMIT, compression=header)
    assert inner["args"]["v"] == "x" * 1000
    # The library's own compression is kombu's.
    ours, our_header = compression.compress(body, method)
    assert (kombu_compression.decompress(ours, our_header), our_header) == (body, header)


def test_a_body_py_amqp_decoded_as_text_is_encoded_back():
    body = wrapped({"method": "m"})
    packed, header = compression.compress(body, "gzip")
    text = packed.decode("latin-1")  # any str that round-trips through UTF-8 works the same
    assert compression.decompress(text.encode("latin-1").decode("utf-8", "surrogateescape")
                                  .encode("utf-8", "surrogateescape"), header, LIMIT) == body


@pytest.mark.parametrize(("pack", "header"), [(zlib.compress, "application/x-gzip"),
                                              (bz2.compress, "application/x-bz2")])
def test_a_compression_bomb_is_refused_without_expanding_it(pack, header):
    bomb = pack(b" " * (16 * LIMIT))
    assert len(bomb) < LIMIT // 20
    with pytest.raises(InvalidMessage, match="expands beyond the limit of 65536 bytes"):
        wire.decode(bomb, **JSON, max_size=LIMIT, compression=header)


@pytest.mark.parametrize(("body", "header", "fragment"), [
    (zlib.compress(b"{}")[:-3], "application/x-gzip", "truncated"),
    (b"not compressed", "application/x-gzip", "corrupt"),
    (b"not compressed", "application/x-bz2", "corrupt"),
    (zlib.compress(b"{}"), "application/x-lzma", "only gzip and bz2"),
])
def test_bad_compressed_bodies_are_refused(body, header, fragment):
    with pytest.raises(InvalidMessage, match=fragment):
        wire.decode(body, **JSON, max_size=LIMIT, compression=header)
