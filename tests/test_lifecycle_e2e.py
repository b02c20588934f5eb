"""The session lifecycle through real HTTP, over both stores: create, list, update, clear, end,
fork, delete, absolute expiry, rate limits and client secrets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from harness.stack import Stack, running_stack, store_url_for

UPSTREAM_KEY = "sk-upstream-key"


@pytest.fixture(params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url), upstream_api_key=UPSTREAM_KEY) as running:
        yield running


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def chat(stack: Stack, session_id: str, text: str, api_key: str = "key-1") -> None:
    with stack.client(api_key, default_headers={"session-id": session_id}) as client:
        client.chat.completions.create(model="m", messages=[user(text)])  # type: ignore[list-item]


def test_create_without_a_body_and_with_every_option(stack: Stack) -> None:
    with stack.client() as client:
        bare = client.post("/sessions", cast_to=object)
        assert bare["object"] == "session"
        assert bare["id"].startswith("sess_")
        assert bare["status"] == "active"
        assert bare["message_count"] == 0
        full = client.post(
            "/sessions",
            cast_to=object,
            body={
                "title": "Support #42",
                "metadata": {"team": "blue"},
                "expires_after": {"anchor": "created_at", "seconds": 3600},
                "rate_limits": {"max_requests_per_1_minute": 5},
                "max_requests": 100,
            },
        )
    assert full["title"] == "Support #42"
    assert full["metadata"] == {"team": "blue"}
    assert full["expires_at"] == full["created_at"] + 3600  # type: ignore[index]
    assert full["rate_limits"] == {"max_requests_per_1_minute": 5}  # type: ignore[index]
    assert full["max_requests"] == 100  # type: ignore[index]


@pytest.mark.parametrize(
    "body",
    [
        {"titel": "typo"},
        {"metadata": {"k": 1}},
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {"expires_after": {"anchor": "tomorrow", "seconds": 5}},
        {"expires_after": {"anchor": "created_at", "seconds": 0}},
        {"rate_limits": {"max_requests_per_1_minute": 0}},
        {"max_requests": "many"},
    ],
)
def test_bad_create_bodies_are_400_and_create_nothing(stack: Stack, body: dict[str, Any]) -> None:
    with stack.http() as http:
        response = http.post("/v1/sessions", json=body)
        assert response.status_code == 400
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert http.get("/v1/sessions").json()["data"] == []


def test_title_defaults_to_the_start_of_the_first_user_message(stack: Stack) -> None:
    with stack.http() as http:
        created = http.post("/v1/sessions").json()
    chat(stack, created["id"], "How do I reset my router when the lights keep blinking orange all night long?")
    with stack.http() as http:
        title = http.get(f"/v1/sessions/{created['id']}").json()["title"]
    assert title == "How do I reset my router when the lights keep blinking"
    assert len(title) <= 60


def test_list_newest_first_with_cursors_filters_and_same_second_order(stack: Stack) -> None:
    with stack.http() as http:
        ids = [http.post("/v1/sessions", json={"metadata": {"n": str(i % 3)}}).json()["id"] for i in range(25)]
        http.post(f"/v1/sessions/{ids[3]}/end")
        walked: list[str] = []
        after = None
        while True:
            page = http.get("/v1/sessions", params={"limit": 10, **({"after": after} if after else {})}).json()
            walked += [session["id"] for session in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert walked == ids[::-1]  # newest first, creation order kept within one second
        ascending = http.get("/v1/sessions", params={"order": "asc", "limit": 100}).json()["data"]
        assert [session["id"] for session in ascending] == ids
        before = http.get("/v1/sessions", params={"before": ids[10], "limit": 3}).json()["data"]
        assert [session["id"] for session in before] == [ids[13], ids[12], ids[11]]
        ended = http.get("/v1/sessions", params={"status": "ended"}).json()["data"]
        assert [session["id"] for session in ended] == [ids[3]]
        tagged = http.get("/v1/sessions", params={"metadata[n]": "1", "limit": 3}).json()
        assert [session["id"] for session in tagged["data"]] == [ids[22], ids[19], ids[16]]
        assert tagged["has_more"] is True
        http.delete(f"/v1/sessions/{ids[24]}")
        assert http.get("/v1/sessions", params={"limit": 1}).json()["data"][0]["id"] == ids[23]
        assert http.get("/v1/sessions", params={"after": "no-such-session"}).status_code == 400
    with stack.http("key-2") as other:
        assert other.get("/v1/sessions").json()["data"] == []


def test_update_clear_end_cancel_and_delete(stack: Stack) -> None:
    chat(stack, "life", "first")
    with stack.http() as http:
        updated = http.post("/v1/sessions/life", json={"title": "Renamed", "metadata": {"a": "b"}}).json()
        assert (updated["title"], updated["metadata"]) == ("Renamed", {"a": "b"})
        cleared = http.delete("/v1/sessions/life/messages").json()
        assert cleared["message_count"] == 0
        assert cleared["title"] == "Renamed"
        assert cleared["usage"]["total_tokens"] > 0  # what the session used stays counted
    chat(stack, "life", "after clearing")
    assert stack.upstream.chat_requests[-1].json["messages"] == [user("after clearing")]
    with stack.http() as http:
        assert http.post("/v1/sessions/life/cancel").json()["status"] == "ended"
        assert http.delete("/v1/sessions/life/messages").status_code == 409
        assert http.get("/v1/sessions/life").json()["status"] == "ended"
        assert [s["id"] for s in http.get("/v1/sessions").json()["data"]] == ["life"]
        assert http.delete("/v1/sessions/life").json()["deleted"] is True
        assert http.get("/v1/sessions/life").status_code == 404
        assert http.get("/v1/sessions").json()["data"] == []


def test_fork_copies_history_up_to_a_message(stack: Stack) -> None:
    for text in ("one", "two", "three"):
        chat(stack, "trunk", text)
    with stack.http() as http:
        messages = http.get("/v1/sessions/trunk/messages").json()["data"]
        fork = http.post("/v1/sessions/trunk/fork", json={"up_to_message_id": messages[1]["id"], "title": "B"})
        assert fork.status_code == 201
        branch = fork.json()
        assert branch["id"] != "trunk"
        assert branch["title"] == "B"
        assert branch["message_count"] == 2
        whole = http.post("/v1/sessions/trunk/fork").json()
        assert whole["message_count"] == 6
        assert whole["title"] == "one"
        assert http.post("/v1/sessions/trunk/fork", json={"up_to_message_id": "msg_nope"}).status_code == 400
    chat(stack, branch["id"], "two, differently")
    assert stack.upstream.chat_requests[-1].json["messages"] == [
        user("one"),
        {"role": "assistant", "content": "reply 1"},
        user("two, differently"),
    ]
    with stack.http() as http:
        assert http.get("/v1/sessions/trunk").json()["message_count"] == 6


def test_absolute_expiry_makes_a_session_read_only(stack: Stack) -> None:
    with stack.http() as http:
        created = http.post("/v1/sessions", json={"expires_after": {"anchor": "created_at", "seconds": 1}}).json()
        deadline = time.monotonic() + 5
        while http.get(f"/v1/sessions/{created['id']}").json()["status"] != "expired":
            assert time.monotonic() < deadline, "the session never expired"
            time.sleep(0.05)
        assert http.get(f"/v1/sessions/{created['id']}").json()["expires_at"] == created["expires_at"]
    with stack.client(default_headers={"session-id": created["id"]}) as client, pytest.raises(openai.ConflictError):
        client.chat.completions.create(model="m", messages=[user("too late")])
    assert stack.upstream.chat_requests == []


def test_rate_limits_answer_429_with_retry_after_and_forward_nothing(stack: Stack) -> None:
    with stack.http() as http:
        per_minute = http.post("/v1/sessions", json={"rate_limits": {"max_requests_per_1_minute": 2}}).json()["id"]
        lifetime = http.post("/v1/sessions", json={"max_requests": 1}).json()["id"]
        body = {"model": "m", "messages": [user("hi")]}
        for _ in range(2):
            assert http.post("/v1/chat/completions", json=body, headers={"session-id": per_minute}).status_code == 200
        refused = http.post("/v1/chat/completions", json=body, headers={"session-id": per_minute})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert http.post("/v1/chat/completions", json=body, headers={"session-id": lifetime}).status_code == 200
        over = http.post("/v1/chat/completions", json=body, headers={"session-id": lifetime})
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "max_requests_exceeded"
        assert int(over.headers["retry-after"]) >= 1
        assert http.get(f"/v1/sessions/{lifetime}").json()["request_count"] == 1
    assert len(stack.upstream.chat_requests) == 3


def test_a_client_secret_chats_on_and_reads_its_own_session_only(stack: Stack) -> None:
    with stack.http() as http:
        created = http.post("/v1/sessions", json={"client_secret": {"expires_after": 600}}).json()
        other = http.post("/v1/sessions").json()["id"]
    secret = created["client_secret"]["value"]
    assert secret.startswith("spcs_")
    assert created["client_secret"]["expires_at"] > time.time()
    with stack.client(api_key=secret) as browser:
        browser.chat.completions.create(model="m", messages=[user("from the browser")])
        forwarded = stack.upstream.chat_requests[-1]
        assert forwarded.header("authorization") == f"Bearer {UPSTREAM_KEY}"
        assert secret not in str(forwarded.headers)
        assert browser.get(f"/sessions/{created['id']}", cast_to=object)["message_count"] == 2  # type: ignore[index]
        for call in (
            lambda: browser.get("/sessions", cast_to=object),
            lambda: browser.get(f"/sessions/{other}", cast_to=object),
            lambda: browser.post(f"/sessions/{created['id']}/end", cast_to=object),
            lambda: browser.models.list(),
            lambda: browser.chat.completions.create(
                model="m", messages=[user("x")], extra_headers={"session-id": other}
            ),
        ):
            with pytest.raises(openai.PermissionDeniedError):
                call()
    with stack.client(api_key="spcs_not-a-real-secret") as stranger, pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="m", messages=[user("x")])
    assert len(stack.upstream.chat_requests) == 1


def test_client_secrets_need_an_upstream_key() -> None:
    with running_stack("memory://") as stack, stack.http() as http:
        response = http.post("/v1/sessions", json={"client_secret": {"expires_after": 60}})
    assert response.status_code == 400
    assert "upstream_api_key" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/sessions/{id}", None),
        ("POST", "/v1/sessions/{id}", {"title": "mine now"}),
        ("DELETE", "/v1/sessions/{id}", None),
        ("GET", "/v1/sessions/{id}/messages", None),
        ("DELETE", "/v1/sessions/{id}/messages", None),
        ("POST", "/v1/sessions/{id}/end", None),
        ("POST", "/v1/sessions/{id}/cancel", None),
        ("POST", "/v1/sessions/{id}/fork", None),
    ],
)
def test_another_credentials_session_is_404_on_every_endpoint(
    stack: Stack, method: str, path: str, body: dict[str, Any] | None
) -> None:
    with stack.http("owner") as owner:
        session_id = owner.post("/v1/sessions", json={"title": "private"}).json()["id"]
    with stack.http("intruder") as intruder:
        response = intruder.request(method, path.format(id=session_id), json=body)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert intruder.get("/v1/sessions").json()["data"] == []
    with stack.http("owner") as owner:
        kept = owner.get(f"/v1/sessions/{session_id}").json()
    assert (kept["title"], kept["status"]) == ("private", "active")


def test_a_session_a_chat_turn_created_counts_every_turn(stack: Stack) -> None:
    # the first turn found no session to count in and created it: it is a request all the same
    for text in ("one", "two", "three"):
        chat(stack, "counted", text)
    with stack.client("key-1") as client:
        session = client.get("/sessions/counted", cast_to=object)
    assert (session["message_count"], session["request_count"]) == (6, 3)  # type: ignore[index]


def test_messages_include_reply_details_on_request(stack: Stack) -> None:
    chat(stack, "detailed", "hello")
    with stack.http() as http:
        plain = http.get("/v1/sessions/detailed/messages").json()["data"]
        detailed = http.get("/v1/sessions/detailed/messages?include=reply_details").json()["data"]
        refused = http.get("/v1/sessions/detailed/messages?include=everything")
    assert [message["role"] for message in detailed] == ["user", "assistant"]
    assert not {"usage", "model", "finish_reason", "dialect"} & set(plain[1])  # as before, unless asked
    assert detailed[1]["dialect"] == "openai"
    assert detailed[1]["usage"]["total_tokens"] > 0
    assert {
        key: value for key, value in detailed[1].items() if key not in ("usage", "model", "finish_reason", "dialect")
    } == plain[1]
    assert "dialect" not in detailed[0]  # only replies carry them
    assert refused.status_code == 400
