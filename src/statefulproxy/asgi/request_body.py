"""What a chat request body must be before the session layer reads it (sans-I/O).

A session body is parsed, rewritten and stored, so it must read the same everywhere: a
compressed body is decoded (gzip, deflate; anything else is a 415), a UTF-8 byte order mark
is dropped, and an integer JSON cannot carry in 64 bits is refused (orjson would read it as
a float and the upstream would get it rounded).
"""

from __future__ import annotations

import json
import re
import zlib

from ..errors import ClientError, body_too_large
from ..types import Receive

_BOM = b"\xef\xbb\xbf"
_LONG_DIGITS = re.compile(rb"-\d{19}|\d{20}")  # the shortest integers past 64 bits
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1


def decoded(body: bytes, content_encoding: bytes, limit: int) -> bytes:
    """``body`` as JSON text: decompressed per ``content_encoding``, without a BOM, at most ``limit``
    (``max_body_size``) bytes."""
    coding = content_encoding.strip().lower()
    if coding in (b"gzip", b"x-gzip", b"deflate"):
        wbits = zlib.MAX_WBITS | 16 if coding != b"deflate" else zlib.MAX_WBITS
        decompressor = zlib.decompressobj(wbits)
        try:
            body = decompressor.decompress(body, limit + 1)
        except zlib.error:
            raise ClientError(400, f"The request body is not valid {coding.decode()} data.") from None
        if len(body) > limit or decompressor.unconsumed_tail:
            raise body_too_large(limit, "max_body_size", decoded=True)
    elif coding not in (b"", b"identity"):
        raise ClientError(
            415,
            f"A chat request body may be sent as is, gzip or deflate; not '{content_encoding.decode('latin-1')}'.",
            code="unsupported_content_encoding",
        )
    return body[len(_BOM) :] if body.startswith(_BOM) else body


def check_integers(body: bytes) -> None:
    """400 for an integer past 64 bits. Cheap: only a body with 19-20 digits in a row is read again."""
    if _LONG_DIGITS.search(body) is None:
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # not JSON: the caller says so
    if _has_huge_integer(parsed):
        raise ClientError(
            400, "The request body has an integer that does not fit in 64 bits.", code="integer_too_large"
        )


def _has_huge_integer(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not _MIN_INT <= item <= _MAX_INT:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def read_body(receive: Receive, limit: int) -> bytes:
    """A whole request body of at most ``limit`` bytes (413 past it; 400 if the client leaves)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientError(400, "The client disconnected.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
