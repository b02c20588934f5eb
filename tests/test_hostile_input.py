"""Hostile and malformed input against a running proxy: a clear 4xx, never a 5xx or a dropped
connection, nothing forwarded and nothing stored (issue 4, "Hostile and malformed input").

uvicorn with httptools sets no limit of its own on the number or size of request headers
(checked: 100,000 headers or a 16 MiB header reach the app), so the proxy's caps
(`max_headers`, `max_header_bytes`) are the only ones, and they answer 431.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest

from harness.stack import Since, Stack, running_stack
from harness.upstream import text
from statefulproxy import ProxyApp, settings_from_mapping
from statefulproxy.types import Message

MAX_BODY = 128 * 1024
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def shared_stack() -> Iterator[Stack]:
    with running_stack("memory://", max_body_size=MAX_BODY) as running:
        yield running


@pytest.fixture
def since(shared_stack: Stack) -> Since:
    return Since(shared_stack)


@pytest.fixture
def http(shared_stack: Stack) -> Iterator[httpx2.Client]:
    with shared_stack.http() as client:
        yield client


@pytest.fixture
def session_id(request: pytest.FixtureRequest) -> str:
    """An id no other test of the module uses."""
    return "h-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def chat_body(*messages: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": list(messages or [user("hi")]), **extra})


def post_chat(http: httpx2.Client, body: bytes, session_id: str | None = None, **headers: str) -> httpx2.Response:
    if session_id is not None:
        headers["session-id"] = session_id
    return http.post(CHAT, content=body, headers={"content-type": "application/json", **headers})


def assert_error(response: httpx2.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def message_count(http: httpx2.Client, session_id: str) -> int | None:
    """The session's message count, or None when it does not exist."""
    response = http.get(f"/v1/sessions/{session_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    count: int = response.json()["message_count"]
    return count


def stored_messages(http: httpx2.Client, session_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    return [{"role": m["role"], "content": m["content"]} for m in response.json()["data"]]


def assert_refused_cleanly(response: httpx2.Response, since: Since, http: httpx2.Client, session_id: str) -> None:
    """A 4xx in the OpenAI shape; the upstream saw nothing, and no session was created."""
    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code)
    assert since.received == []
    assert message_count(http, session_id) is None


# --- body size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("session", [True, False], ids=["session", "stateless"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_chat_body_over_the_cap_is_413(
    http: httpx2.Client, since: Since, session_id: str, session: bool, framing: str
) -> None:
    body = chat_body(user("x" * (MAX_BODY + 1)))
    content: bytes | Iterator[bytes] = body
    if framing == "chunked":  # no length announced: the cap applies as the body arrives
        content = iter([body[i : i + 16384] for i in range(0, len(body), 16384)])
    headers = {"content-type": "application/json"}
    if session:
        headers["session-id"] = session_id
    response = http.post(CHAT, content=content, headers=headers)
    assert_error(response, 413, "request_too_large")
    assert since.received == []
    assert message_count(http, session_id) is None
    # the connection and the proxy carry on
    assert post_chat(http, chat_body(), session_id).status_code == 200
    assert message_count(http, session_id) == 2


def test_chat_body_at_the_cap_is_accepted(http: httpx2.Client, since: Since, session_id: str) -> None:
    empty = len(chat_body(user("")))
    body = chat_body(user("x" * (MAX_BODY - empty)))
    assert len(body) == MAX_BODY
    assert post_chat(http, body, session_id).status_code == 200
    assert since.received[0].json["messages"] == [user("x" * (MAX_BODY - empty))]


# --- header caps ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, "/v1/models", "/healthz", "/v1/sessions"])
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({f"x-h{i}": "v" for i in range(10_000)}, id="10k-headers"),
        pytest.param({f"x-h{i}": "v" for i in range(101)}, id="101-headers"),
        pytest.param({"x-big": "a" * (1024 * 1024)}, id="1MiB-header"),
        pytest.param({f"x-h{i}": "a" * 1000 for i in range(70)}, id="70KiB-in-70-headers"),
    ],
)
def test_header_caps_are_431(
    http: httpx2.Client, since: Since, session_id: str, path: str, headers: dict[str, str]
) -> None:
    response = http.post(path, content=chat_body(), headers={"session-id": session_id, **headers})
    assert_error(response, 431, "request_header_fields_too_large")
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] is None
    assert since.received == []
    assert message_count(http, session_id) is None


def test_absurd_header_is_431_not_a_dropped_connection(http: httpx2.Client, since: Since, session_id: str) -> None:
    # uvicorn/httptools buffers a head of any size and hands it over: the cap answers it
    headers = {"session-id": session_id, "x-absurd": "a" * (16 * 1024 * 1024)}
    response = http.post(CHAT, content=chat_body(), headers=headers)
    assert_error(response, 431, "request_header_fields_too_large")
    assert since.received == []
    assert message_count(http, session_id) is None


async def call(app: ProxyApp, path: str, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """One request straight into the ASGI app; what it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b""}
    await app({**scope, "headers": headers}, receive, send)
    return sent


@pytest.mark.anyio
async def test_header_caps_are_exact() -> None:
    settings = settings_from_mapping(
        {"upstream": "http://127.0.0.1:9", "max_headers": 10, "max_header_bytes": 200}, source="test"
    )
    app = ProxyApp(settings)

    async def status(headers: list[tuple[bytes, bytes]]) -> int:
        sent = await call(app, "/healthz", headers)
        assert sent[-1].get("more_body", False) is False
        return int(sent[0]["status"])

    ten = [(b"x-h%d" % i, b"v") for i in range(10)]
    assert await status(ten) == 200
    assert await status([*ten, (b"x-one", b"more")]) == 431
    # names and values count, 200 bytes in all
    exactly = [(b"x-a", b"v" * 97), (b"x-b", b"v" * 97)]
    assert await status(exactly) == 200
    assert await status([(b"x-a", b"v" * 97), (b"x-b", b"v" * 98)]) == 431


# --- JSON nesting -------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


NESTING_PLACES = {
    "content": lambda deep: '{"model":"m","messages":[{"role":"user","content":' + deep + "}]}",
    "message-field": lambda deep: '{"model":"m","messages":[{"role":"user","content":"hi","x":' + deep + "}]}",
    "top-level": lambda deep: '{"model":"m","tools":' + deep + ',"messages":[{"role":"user","content":"hi"}]}',
    "metadata": lambda deep: '{"model":"m","metadata":{"x":' + deep + '},"messages":[{"role":"user","content":"hi"}]}',
}


@pytest.mark.parametrize("depth", [300, 2000], ids=["orjson-cannot-write", "orjson-cannot-read"])
@pytest.mark.parametrize("place", list(NESTING_PLACES))
def test_deeply_nested_session_request_is_400(
    http: httpx2.Client, since: Since, session_id: str, depth: int, place: str
) -> None:
    body = NESTING_PLACES[place](nested(depth)).encode()
    response = post_chat(http, body, session_id)
    assert_error(response, 400)
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert since.received == []
    assert message_count(http, session_id) is None


@pytest.mark.parametrize("depth", [300, 2000], ids=["orjson-cannot-write", "orjson-cannot-read"])
def test_deeply_nested_request_naming_its_session_in_the_body_is_400(
    http: httpx2.Client, since: Since, session_id: str, depth: int
) -> None:
    deep = nested(depth)
    body = '{"model":"m","session_id":"' + session_id + '","tools":' + deep + ',"messages":[{"role":"user"}]}'
    response = post_chat(http, body.encode())
    assert_error(response, 400)
    assert since.received == []
    assert message_count(http, session_id) is None


@pytest.mark.parametrize("content", ["hi", "caf\\u00e9"], ids=["not-parsed", "parsed"])
def test_deeply_nested_stateless_request_is_forwarded_untouched(
    http: httpx2.Client, since: Since, content: str
) -> None:
    # a JSON escape makes the proxy parse the body to look for a session field; it finds none.
    # (300 levels: the scripted upstream's json module cannot read 1,000.)
    body = NESTING_PLACES["message-field"](nested(300)).replace('"hi"', '"' + content + '"').encode()
    assert post_chat(http, body).status_code == 200
    assert [r.body for r in since.received] == [body]


# --- bytes that are not JSON, or not UTF-8 ------------------------------------------------------

INVALID_UTF8 = [
    b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"caf\xc3"}]}',  # truncated sequence
    b'{"model":"m","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',  # encoded surrogate
    b'{"model":"m","messages":[{"role":"us\xc0\xafer","content":"hi"}]}',  # overlong
]


@pytest.mark.parametrize("body", INVALID_UTF8)
def test_invalid_utf8_session_body_is_400(http: httpx2.Client, since: Since, session_id: str, body: bytes) -> None:
    assert_refused_cleanly(post_chat(http, body, session_id), since, http, session_id)


@pytest.mark.parametrize("body", INVALID_UTF8)
def test_invalid_utf8_stateless_body_is_forwarded_untouched(http: httpx2.Client, since: Since, body: bytes) -> None:
    assert post_chat(http, body).status_code == 200
    assert [r.body for r in since.received] == [body]


def test_session_header_that_is_not_ascii_is_400(http: httpx2.Client, since: Since) -> None:
    response = http.post(CHAT, content=chat_body(), headers={"session-id": b"caf\xe9"})
    assert_error(response, 400, "invalid_session_id")
    assert since.received == []


@pytest.mark.parametrize(
    "body", [b"[]", b'"x"', b"1", b"null", b"true", b"", b"   ", b"{", b"not json", b'{"a":1}{"b":2}', b"\x00"]
)
def test_session_body_that_is_not_an_object_is_400(
    http: httpx2.Client, since: Since, session_id: str, body: bytes
) -> None:
    response = post_chat(http, body, session_id)
    assert_refused_cleanly(response, since, http, session_id)
    assert response.status_code == 400


# --- duplicate keys: what the upstream reads is what was recorded -------------------------------

DUPLICATES = {
    "messages": '{"model":"m","messages":[{"role":"user","content":"first"}],'
    '"messages":[{"role":"user","content":"second"}]}',
    "content": '{"model":"m","messages":[{"role":"user","content":"first","content":"second"}]}',
    "role": '{"model":"m","messages":[{"role":"system","role":"user","content":"second"}]}',
    "metadata": '{"model":"m","metadata":{"a":"1"},"messages":[{"role":"user","content":"second"}],'
    '"metadata":{"b":"2"}}',
    "store": '{"model":"m","store":false,"messages":[{"role":"user","content":"second"}],"store":true}',
    "stream": '{"model":"m","stream":true,"messages":[{"role":"user","content":"second"}],"stream":false}',
}


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys forwarded: {keys}"
    return dict(pairs)


@pytest.mark.parametrize("duplicated", list(DUPLICATES))
def test_duplicate_keys_forward_what_is_recorded(
    shared_stack: Stack, http: httpx2.Client, since: Since, session_id: str, duplicated: str
) -> None:
    shared_stack.upstream.push(text("answer"))
    response = post_chat(http, DUPLICATES[duplicated].encode(), session_id)
    assert response.status_code == 200, response.text
    (received,) = since.received
    # the upstream reads one value per key, and it is the one the proxy acted on (the last)
    forwarded = json.loads(received.body, object_pairs_hook=no_duplicate_keys)
    assert forwarded["messages"] == [user("second")]
    assert forwarded.get("stream", False) is False
    assert stored_messages(http, session_id) == [user("second"), {"role": "assistant", "content": "answer"}]
    if duplicated == "metadata":
        assert forwarded["metadata"] == {"b": "2"}
        assert http.get(f"/v1/sessions/{session_id}").json()["metadata"] == {"b": "2"}


def test_duplicate_session_ids_in_the_body_last_one_wins(http: httpx2.Client, since: Since, session_id: str) -> None:
    body = '{"session_id":"' + session_id + '-a","model":"m","messages":[{"role":"user","content":"hi"}],'
    body += '"session_id":"' + session_id + '-b"}'
    response = post_chat(http, body.encode())
    assert response.status_code == 200, response.text
    assert response.headers["x-session-id"] == session_id + "-b"
    assert message_count(http, session_id + "-a") is None
    assert message_count(http, session_id + "-b") == 2
    (received,) = since.received
    assert "session_id" not in json.loads(received.body, object_pairs_hook=no_duplicate_keys)


# --- messages of the wrong types ----------------------------------------------------------------

WRONG_MESSAGES: dict[str, Any] = {
    "object": {},
    "null": None,
    "string": "hi",
    "numbers": [1],
    "nested-array": [[]],
    "role-number": [{"role": 5}],
    "role-missing": [{"content": "hi"}],
    "role-empty": [{"role": ""}],
    "role-object": [{"role": {"user": True}}],
    "content-object": [{"role": "user", "content": {"nested": {"deeper": [1, 2, {"x": None}]}}}],
    "content-number": [{"role": "user", "content": 5}],
    "content-parts-odd": [{"role": "user", "content": [1, {"type": "text", "text": 5}, {"text": None}]}],
    "name-object": [{"role": "user", "content": "hi", "name": {}}],
    "tool-calls-number": [{"role": "assistant", "tool_calls": 5}],
    "tool-calls-true": [{"role": "assistant", "tool_calls": True}],
    "tool-calls-string": [{"role": "assistant", "tool_calls": "call"}],
    "tool-calls-object": [{"role": "assistant", "tool_calls": {"id": "x"}}],
    "tool-calls-numbers": [{"role": "assistant", "tool_calls": [1, 2]}],
    "tool-call-function-string": [{"role": "assistant", "tool_calls": [{"id": "c", "function": "f"}]}],
    "tool-without-id": [{"role": "tool"}],
    "unknown-role": [{"role": "wizard", "content": "hi"}],
    "empty": [],
    "huge-number": [{"role": "user", "content": 10**400}],
}


@pytest.mark.parametrize("messages", list(WRONG_MESSAGES))
def test_messages_of_wrong_types_are_never_a_5xx(
    http: httpx2.Client, since: Since, session_id: str, messages: str
) -> None:
    value = WRONG_MESSAGES[messages]
    body = json.dumps({"model": "m", "messages": value}).encode()
    response = post_chat(http, body, session_id)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_refused_cleanly(response, since, http, session_id)
    else:
        (received,) = since.received
        assert received.json["messages"] == value
        assert message_count(http, session_id) == len(value) + 1


def test_missing_messages_is_400(http: httpx2.Client, since: Since, session_id: str) -> None:
    response = post_chat(http, b'{"model":"m"}', session_id)
    assert_refused_cleanly(response, since, http, session_id)
    assert response.json()["error"]["param"] == "messages"


# --- huge histories -----------------------------------------------------------------------------


def test_huge_history_is_resumed_past_the_body_cap(http: httpx2.Client, since: Since, session_id: str) -> None:
    # 2,000 messages in one full-array request, within the cap
    first = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i:04d} " + "x" * 20} for i in range(2000)
    ]
    body = chat_body(*first)
    assert len(body) < MAX_BODY
    assert post_chat(http, body, session_id).status_code == 200
    assert message_count(http, session_id) == 2001
    # 1,000 more as a resume: the history spliced in makes the upstream body larger than the cap,
    # which limits what a client sends, not what the proxy forwards
    more = [user(f"more {i:04d} " + "y" * 20) for i in range(1000)]
    assert post_chat(http, chat_body(*more), session_id).status_code == 200
    forwarded = since.received[-1]
    assert len(forwarded.body) > MAX_BODY
    assert len(forwarded.json["messages"]) == 3001
    assert forwarded.json["messages"][:2000] == first
    assert message_count(http, session_id) == 3002
    # the whole transcript resent is over the cap: refused, nothing stored, nothing forwarded
    history = [*first, forwarded.json["messages"][2000], *more]
    upstream_count = len(since.received)
    too_big = chat_body(*history, user("again"))
    assert len(too_big) > MAX_BODY
    assert_error(post_chat(http, too_big, session_id), 413, "request_too_large")
    assert len(since.received) == upstream_count
    assert message_count(http, session_id) == 3002
    # and a short resume carries on
    assert post_chat(http, chat_body(user("last")), session_id).status_code == 200
    assert len(since.received[-1].json["messages"]) == 3003
    assert message_count(http, session_id) == 3004


# --- the management API -------------------------------------------------------------------------

BAD_MANAGEMENT_BODIES = {
    "bad-json": b"{not json",
    "array": b"[]",
    "string": b'"title"',
    "number": b"1",
    "null": b"null",
    "invalid-utf8": b'{"title":"\xff"}',
    "deep-2000": ('{"metadata":' + nested(2000) + "}").encode(),
    "deep-300": ('{"metadata":{"k":' + nested(300) + "}}").encode(),
    "deep-object": ('{"title":' + '{"a":' * 300 + "1" + "}" * 300 + "}").encode(),
    "too-large": b'{"title":"' + b"x" * (2 * 1024 * 1024) + b'"}',
    "metadata-not-strings": b'{"metadata":{"k":{"v":1}}}',
    "unknown-field": b'{"titel":"x"}',
}


def list_ids(http: httpx2.Client) -> list[str]:
    response = http.get("/v1/sessions", params={"limit": 100})
    assert response.status_code == 200
    return [session["id"] for session in response.json()["data"]]


@pytest.fixture
def management_session(http: httpx2.Client) -> dict[str, Any]:
    created = http.post("/v1/sessions", json={"title": "kept", "metadata": {"k": "v"}})
    assert created.status_code == 201
    session: dict[str, Any] = created.json()
    return session


@pytest.mark.parametrize("body", list(BAD_MANAGEMENT_BODIES))
@pytest.mark.parametrize("endpoint", ["create", "update", "fork"])
def test_bad_management_bodies_are_4xx(
    http: httpx2.Client, since: Since, management_session: dict[str, Any], body: str, endpoint: str
) -> None:
    path = {
        "create": "/v1/sessions",
        "update": f"/v1/sessions/{management_session['id']}",
        "fork": f"/v1/sessions/{management_session['id']}/fork",
    }[endpoint]
    before = list_ids(http)
    response = http.post(path, content=BAD_MANAGEMENT_BODIES[body], headers={"content-type": "application/json"})
    error = assert_error(response, 413 if body == "too-large" else 400)
    assert error["type"] == "invalid_request_error"
    assert list_ids(http) == before
    after = http.get(f"/v1/sessions/{management_session['id']}").json()
    assert (after["title"], after["metadata"]) == ("kept", {"k": "v"})
    assert since.received == []
