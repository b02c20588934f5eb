"""The owner secret every proxy on one Redis shares: made once, adopted by all, re-read now and then.

It keys the credential hash when no ``scope_secret`` is configured, so two proxies that held
different ones would show one credential two sets of sessions. The first secret written wins
(``SET NX``) and every proxy adopts the stored one. A Redis that loses its data loses it too:
each proxy re-reads it every ``SECRET_RECHECK`` seconds, writes its own back if it is gone
(``SET NX`` again: still the first writer wins) and adopts the stored one if it differs, with
a warning. The proxies agree again within that time, and never fork for good.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from ..errors import StoreError
from .redis_codec import translate_errors
from .resp import Script

logger = logging.getLogger("statefulproxy")

SECRET_RECHECK = 5.0  # seconds of the store's clock between two reads of the stored secret

# ARGV: a secret. The first one written stays. -> {the stored secret, 1 if this call wrote it}
OWNER_SECRET = """
local written = redis.call('SET', KEYS[1], ARGV[1], 'NX')
return {redis.call('GET', KEYS[1]), written and 1 or 0}
"""


class SharedSecret:
    """The owner secret kept under ``key``; ``clock`` returns seconds."""

    def __init__(self, client: Any, key: str, clock: Callable[[], float]) -> None:
        self._client = client
        self._key = key
        self._clock = clock
        self.script = Script(OWNER_SECRET)
        self._secret: bytes | None = None
        self._due = 0.0  # when the stored secret is read again
        self._reading = False

    async def read(self) -> bytes:
        now, cached = self._clock(), self._secret
        if cached is not None and (now < self._due or self._reading):
            return cached
        self._reading = True
        try:
            with translate_errors("owner_secret"):
                stored, written = await self._client.run_script(self.script, (self._key,), (cached or os.urandom(32),))
        except StoreError:
            if cached is None:
                raise
            return cached  # the store is down: read again at the next call
        finally:
            self._reading = False
        self._due = now + SECRET_RECHECK
        self._secret = stored = bytes(stored)
        if cached is not None and stored != cached:
            logger.warning(
                "the owner secret in the store is not the one this proxy used (the store lost its data and another "
                "proxy made a new one): adopting the store's; set scope_secret to avoid this"
            )
        elif cached is not None and written:
            logger.warning("the owner secret was gone from the store (it lost its data): wrote this proxy's back")
        return stored
