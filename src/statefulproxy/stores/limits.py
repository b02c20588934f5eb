"""The storage caps every store enforces, and the refusal a client gets when one is reached."""

from __future__ import annotations

import math

from ..errors import ClientError

# Retry-After of a refusal that no expiry will lift (sessions without an inactivity TTL)
NO_EXPIRY_RETRY = 86400


def session_limit_error(cap: int, retry_after: float) -> ClientError:
    """429 ``session_limit_reached``: the owner has ``cap`` sessions and would create one more.

    ``retry_after`` is the seconds until the owner's first session expires if nothing uses it
    meanwhile: the earliest a slot frees up by itself.
    """
    return ClientError(
        429,
        f"This credential already has {cap} sessions, the most it may keep (max_sessions_per_owner): "
        "delete one, or wait for an idle one to expire.",
        type="rate_limit_error",
        code="session_limit_reached",
        headers=[(b"retry-after", str(max(math.ceil(retry_after), 1)).encode())],
    )
