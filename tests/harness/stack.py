"""A running proxy in front of a running scripted upstream, for end-to-end tests."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from harness.servers import serve
from harness.upstream import RecordedRequest, ScriptedUpstream
from statefulproxy import ProxyApp, settings_from_mapping
from statefulproxy.stores import store_from_url


@dataclass
class Stack:
    upstream: ScriptedUpstream
    upstream_url: str
    url: str

    def client(self, api_key: str = "key-1", **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **options)

    def http(self, api_key: str | None = "key-1") -> httpx2.Client:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=10)


class Since:
    """The upstream's requests since the test began (the stack is shared by the module's tests)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.before = len(stack.upstream.received)

    @property
    def received(self) -> list[RecordedRequest]:
        return self.stack.upstream.received[self.before :]


def store_url_for(kind: str, redis_url: str | None) -> str:
    return "memory://" if kind == "memory" else str(redis_url)


@contextlib.contextmanager
def running_stack(store_url: str, **settings: Any) -> Iterator[Stack]:
    upstream = ScriptedUpstream()
    # uvloop: on the asyncio loop every request to the scripted upstream took ~40 ms
    with serve(upstream, loop="uvloop") as upstream_url:
        values = {"upstream": upstream_url, "store": store_url, **settings}
        proxy_settings = settings_from_mapping(values, source="test")
        # a private key prefix per stack: tests may share one redis-server, never its keys
        store = store_from_url(
            store_url,
            ttl=proxy_settings.session_ttl,
            key_prefix=f"t{uuid.uuid4().hex[:12]}",
            timeout=proxy_settings.store_timeout,
        )
        # the event loop the CLI runs the proxy on
        with serve(ProxyApp(proxy_settings, store=store), loop="uvloop") as url:
            yield Stack(upstream, upstream_url, url)
