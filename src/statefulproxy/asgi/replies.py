"""Replies the proxy answers itself: errors in the request's dialect (OpenAI's by default), small JSON bodies."""

from __future__ import annotations

from typing import Any

import orjson

from ..dialects.base import Dialect
from ..errors import ClientError, error_body
from ..types import Headers, Send


async def send_json(send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_object(send: Send, status: int, value: Any, headers: Headers | None = None) -> None:
    await send_json(send, status, orjson.dumps(value), headers)


async def send_error(send: Send, error: ClientError, dialect: Dialect | None = None) -> None:
    if dialect is None:
        body = error_body(error.message, error.type, error.param, error.code)
    else:
        body = dialect.error_body(error)
    await send_json(send, error.status, body, error.headers)


async def send_failure(
    send: Send, status: int, message: str, type: str, code: str | None = None, dialect: Dialect | None = None
) -> None:
    await send_error(send, ClientError(status, message, type=type, code=code), dialect)
