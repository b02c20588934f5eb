"""Checks every request passes before anything else reads it: header caps and unambiguous framing.

The ASGI server (uvicorn with httptools) sets no limit on the number or size of headers,
so these caps are the only ones. The framing checks repeat what httptools already
refuses, for servers that do not, and add one it accepts: a transfer coding other than
``chunked``, whose body the server has de-chunked but not decoded.
"""

from __future__ import annotations

from ..errors import ClientError
from ..types import Headers

_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_FRAMING_NAMES = (_CONTENT_LENGTH, _TRANSFER_ENCODING)
# a name of another length cannot be either: most names are passed over without being lowered
_FRAMING_NAME_LENGTHS = (len(_CONTENT_LENGTH), len(_TRANSFER_ENCODING))
_AUTHORIZATION = b"authorization"
_AUTHORIZATION_LENGTH = len(_AUTHORIZATION)


def check_request_head(headers: Headers, max_headers: int, max_header_bytes: int) -> ClientError | None:
    """The error to answer a request's headers with, or None.

    One pass, allocating nothing for a request without a body or with one plain
    ``content-length``; any other framing header gets a closer look.
    """
    if len(headers) > max_headers:
        return _too_large(f"The request has more than {max_headers} headers.")
    total = authorizations = 0
    has_length = unusual = False
    for name, value in headers:
        total += len(name) + len(value)
        if len(name) in _FRAMING_NAME_LENGTHS:
            if name == _CONTENT_LENGTH and not has_length and value.isdigit():
                has_length = True
            elif name == _CONTENT_LENGTH or name.lower() in _FRAMING_NAMES:
                unusual = True
        elif len(name) == _AUTHORIZATION_LENGTH and name.lower() == _AUTHORIZATION:
            authorizations += 1
    if total > max_header_bytes:
        return _too_large(f"The request's headers exceed {max_header_bytes} bytes.")
    if authorizations > 1:
        # whose credential is it? A second one (a session's client secret, say) must never travel on
        return ClientError(400, "A request may carry one Authorization header.", code="duplicate_authorization")
    return _check_framing(headers) if unusual else None


def _check_framing(headers: Headers) -> ClientError | None:
    """Refuse a request whose body length is ambiguous (request smuggling, RFC 9112 6.1, 6.3)."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == _CONTENT_LENGTH:
            lengths.append(value.strip())
        elif lowered == _TRANSFER_ENCODING:
            codings.extend(token.strip().lower() for token in value.split(b","))
    codings = [coding for coding in codings if coding]
    if lengths and codings:
        return _bad_framing("A request may not carry both Content-Length and Transfer-Encoding.")
    if codings and codings != [b"chunked"]:
        # the server took the body out of its chunks, but no further coding off it: relayed,
        # it would reach the upstream still encoded and no longer labelled so
        return _bad_framing("The only Transfer-Encoding accepted is 'chunked'.")
    if lengths and (not all(length.isdigit() for length in lengths) or len({int(length) for length in lengths}) > 1):
        return _bad_framing("The request's Content-Length is not one decimal number.")
    return None


def _too_large(message: str) -> ClientError:
    return ClientError(431, message, code="request_header_fields_too_large")


def _bad_framing(message: str) -> ClientError:
    # where the next request would start is in doubt: the server closes the connection (RFC 9112 6.3)
    return ClientError(400, message, code="bad_framing", headers=[(b"connection", b"close")])
