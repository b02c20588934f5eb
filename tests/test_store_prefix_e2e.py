"""store_prefix (issue 9): one Redis hosts several deployments, each under its own key prefix."""

from __future__ import annotations

import uuid

import httpx2
import redis

from harness.servers import serve
from harness.upstream import ScriptedUpstream
from statefulproxy import ProxyApp, settings_from_mapping


def test_two_deployments_on_one_redis_never_share_a_key(redis_url: str) -> None:
    upstream = ScriptedUpstream()
    first, second = f"pa{uuid.uuid4().hex[:8]}", f"pb{uuid.uuid4().hex[:8]}"
    with serve(upstream, loop="uvloop") as upstream_url:
        apps = [
            ProxyApp(
                settings_from_mapping(
                    {"upstream": upstream_url, "store": redis_url, "store_prefix": prefix}, source="t"
                )
            )
            for prefix in (first, second)
        ]
        with serve(apps[0], loop="uvloop") as url_a, serve(apps[1], loop="uvloop") as url_b:
            headers = {"authorization": "Bearer same-key", "session-id": "same-session"}
            body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
            for url in (url_a, url_b, url_a):
                assert httpx2.post(url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
            counts = [
                httpx2.get(url + "/v1/sessions/same-session", headers=headers).json()["message_count"]
                for url in (url_a, url_b)
            ]
    assert counts == [4, 2]  # the same credential and id, two separate sessions
    client = redis.Redis.from_url(redis_url)
    try:
        keys_a = list(client.scan_iter(match=f"{first}:*"))
        keys_b = list(client.scan_iter(match=f"{second}:*"))
        assert keys_a
        assert keys_b
        assert not set(keys_a) & set(keys_b)
        client.delete(*keys_a, *keys_b)
    finally:
        client.close()
