"""Property-based tests, in-process (issue 4, "Fuzzing").

1. Generated requests (methods, paths, headers, session ids, credentials, bodies: JSON of
   every shape, session fields everywhere, random and truncated bytes, deep nesting,
   duplicate keys, invalid UTF-8) go straight into the ASGI app: ProxyApp (header caps,
   health) around SessionMiddleware around a fake upstream that answers every request 200
   with a valid completion. So any 5xx is the proxy's own. Every response is started and
   completed, none is a 5xx, and a refused (4xx) request forwards nothing and stores nothing.
2. Every fixture stream that completes with ``[DONE]``, cut into random chunks (and
   gzip-compressed at random), through the ResponseTap: the client receives the same
   messages, and the recorded turn is the one the whole stream gives.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statefulproxy import ProxyApp, SessionMiddleware, settings_from_mapping
from statefulproxy.asgi.tap import ResponseTap
from statefulproxy.dialects import OPENAI
from statefulproxy.dialects.openai_recorder import ChatStreamRecorder
from statefulproxy.dialects.openai_stream import AssistantReply
from statefulproxy.stores.memory import MemoryStore
from statefulproxy.types import Message, Receive, Scope, Send

REQUEST_EXAMPLES = 10_000
CHUNKING_EXAMPLES = 1_100
TIMEOUT = 5.0  # a request that takes longer in-process hangs

SETTINGS = settings_from_mapping(
    {
        "upstream": "http://upstream.invalid",
        "max_body_size": 16 * 1024,
        "max_headers": 24,
        "max_header_bytes": 2048,
        "on_busy": "reject",  # requests run one at a time: a busy session would be a leaked lease
        "upstream_api_key": "sk-upstream",
    },
    source="test_fuzz",
)

# --- the fake upstream ---------------------------------------------------------------------------


def completion(model: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fuzz",
        "object": "chat.completion",
        "created": 1,
        "model": model if isinstance(model, str) else "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def stream_events(model: Any) -> list[bytes]:
    base = {"id": "chatcmpl-fuzz", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [({"role": "assistant", "content": ""}, None), ({"content": "ok"}, None), ({}, "stop")]
    events = [
        b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"
        for delta, finish in deltas
    ]
    return [*events, b"data: [DONE]\n\n"]


@dataclass
class FakeUpstream:
    """Answers every request 200 with a completion (streamed if asked to); counts its calls."""

    calls: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            assert message["type"] == "http.request", message
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.calls += 1
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        request = parsed if isinstance(parsed, dict) else {}
        if request.get("stream") is True:
            start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            await send(start)
            for event in stream_events(request.get("model")):
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        data = orjson.dumps(completion(request.get("model")))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})


# --- driving one request ---------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class Exchange:
    """What the app sent for one request, checked to be one well-formed response."""

    messages: list[Message] = field(default_factory=list)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, message: Message) -> None:
        assert not self.complete.is_set(), f"sent after the response was complete: {message}"
        if not self.messages:
            assert message["type"] == "http.response.start", message
            assert isinstance(message["status"], int)
        else:
            assert message["type"] == "http.response.body", message
        self.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete.set()

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(message.get("body", b"") for message in self.messages[1:])


async def run_request(app: ProxyApp, request: Request) -> Exchange:
    exchange = Exchange()
    pending = list(request.chunks)

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        # a client that sent its whole request waits for the answer: disconnect only after it
        await exchange.complete.wait()
        return {"type": "http.disconnect"}

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode("utf-8", "surrogateescape"),
        "query_string": request.query,
        "root_path": "",
        "headers": request.headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    await asyncio.wait_for(app(scope, receive, exchange.send), TIMEOUT)
    assert exchange.messages, "no response at all"
    assert exchange.complete.is_set(), "the response was never completed"
    return exchange


def stored_counts(store: MemoryStore) -> dict[tuple[str, str], int]:
    """Every session the store holds, with its message count (read from the memory store itself)."""
    return {key: len(session.messages) for key, session in store._sessions.items()}


# --- strategies -----------------------------------------------------------------------------------
#
# Hypothesis spends ~75 us per draw, so 10,000 examples of finely drawn requests take minutes.
# Here most draws are one choice from a pool of prepared values (nested, odd and wrong ones
# included, some made by a seeded generator), and a request is a handful of draws.

VALID_IDS = ["s1", "s2", "S-3.x:y_z", "a" * 128, "sess_" + "0" * 32]
INVALID_IDS = ["", "a" * 129, "has space", "caf\u00e9", "../x", "s1\t", "s/1", "s1\u0000"]
IDS = VALID_IDS + INVALID_IDS

SCALARS: list[Any] = [None, True, False, 0, 1, -1, 2**63, 2**64 - 1, -(2**63), 1.5, -0.0, 1e308, ""]
SCALARS += ["x", "s1", "user", "assistant", "session_id", "\u00fc\u00f1\u00ee", "\u0000", "a" * 300, "\\u0041"]
KEYS = ["model", "messages", "session_id", "sessionId", "metadata", "store", "stream", "role", "content", "x", ""]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of any shape, from a seeded generator."""
    kind = rng.randrange(6) if depth < 4 else 0
    if kind <= 2:
        return rng.choice(SCALARS)
    if kind == 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_message(rng: random.Random) -> Any:
    if rng.random() < 0.15:
        return random_value(rng)
    role = rng.choice(["user", "assistant", "system", "developer", "tool", "function", "", 5, None])
    message: dict[str, Any] = {"role": role} if rng.random() < 0.95 else {}
    if rng.random() < 0.85:
        message["content"] = rng.choice(
            [
                f"text {rng.randrange(100)}",
                None,
                "",
                [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "data:,"}}],
                [1, {"text": None}],
                random_value(rng),
            ]
        )
    if rng.random() < 0.2:
        call = {"id": f"call_{rng.randrange(3)}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        message["tool_calls"] = rng.choice(
            [[call], [call, call], [], None, [1], [{"function": "f"}], random_value(rng)]
        )
    if rng.random() < 0.1:
        message["tool_call_id"] = rng.choice(["call_0", 5, None])
    if rng.random() < 0.1:
        message["name"] = rng.choice(["n", {}, 1])
    if rng.random() < 0.1:
        message["reasoning_content"] = rng.choice(["thought", None, []])
    return message


def pools() -> dict[str, list[Any]]:
    rng = random.Random(20240604)
    plain = [{"role": "user", "content": "hi"}]
    turn = [*plain, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    messages: list[Any] = [plain, turn, [], {}, None, "hi", [1], [[]], [{"role": 5}], [{"content": "x"}]]
    messages += [[random_message(rng) for _ in range(rng.randrange(1, 5))] for _ in range(150)]
    messages += [random_value(rng) for _ in range(20)]
    values = [random_value(rng) for _ in range(40)]
    return {
        "model": ["m", "m", None, 5, ["m"]],
        "messages": messages,
        "session_id": [*IDS, *IDS, None, 5, ["s1"], {"id": "s1"}],
        "sessionId": IDS,
        "metadata": [
            *({"session_id": session_id} for session_id in IDS),
            {"session_id": "s1", "k": "v"},
            {"k": "v"},
            {"k": {"nested": 1}},
            {"session_id": 5},
            {},
            None,
            "m",
            [],
            {str(i): "v" for i in range(20)},
            {"k" * 70: "v", "v": "x" * 600},
        ],
        "store": [True, True, False, None, "true", 1, []],
        "stream": [True, False, None, "yes", 1],
        "stream_options": [{"include_usage": True}, None, "x", {"include_usage": "no"}],
        # management API fields, for the same bodies sent to /v1/sessions...
        "title": ["t", "", None, 5, "x" * 600, {}],
        "expires_after": [{"anchor": "created_at", "seconds": 60}, {"anchor": "x", "seconds": -1}, 5, {}, None],
        "rate_limits": [{"max_requests_per_1_minute": 1}, {"max_requests_per_1_minute": -1}, {}, None, "x"],
        "max_requests": [1, 0, -1, None, "1", 2**64 - 1],
        "client_secret": [{"expires_after": 60}, {"expires_after": -1}, {}, True, None],
        "up_to_message_id": ["msg_x", "", 5, None],
        "values": values,
    }


POOLS = pools()
BODY_KEYS = [key for key in POOLS if key != "values"]
KEY_SETS: list[tuple[str, ...]] = [
    ("model", "messages"),
    ("model", "messages"),
    ("model", "messages", "stream"),
    ("model", "messages", "session_id"),
    ("model", "messages", "sessionId"),
    ("model", "messages", "metadata"),
    ("model", "messages", "store"),
    ("model", "messages", "store", "metadata"),
    ("model", "messages", "session_id", "metadata", "store"),
    ("model", "messages", "stream", "stream_options", "metadata"),
    ("messages",),
    ("model",),
    (),
    ("title", "metadata"),
    ("title", "metadata", "expires_after", "rate_limits", "max_requests"),
    ("client_secret",),
    ("up_to_message_id", "title"),
    *((key,) for key in BODY_KEYS),
]


# strategies are built once: building one inside a draw costs more than the draw
KEY_SET_DRAWS = st.sampled_from(KEY_SETS)
POOL_DRAWS = {key: st.sampled_from(values) for key, values in POOLS.items()}
OFFSETS = st.integers(0, 2**16)  # taken modulo a length: one strategy for any length


@st.composite
def chat_objects(draw: st.DrawFn) -> dict[str, Any]:
    return {key: draw(POOL_DRAWS[key]) for key in draw(KEY_SET_DRAWS)}


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def with_duplicates(first: dict[str, Any], second: dict[str, Any]) -> bytes:
    if not first or not second:
        return dumps(first)
    return dumps(first)[:-1] + b"," + dumps(second)[1:]


MANGLINGS = st.sampled_from(["truncate", "pad", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    data = dumps(draw(chat_objects()))
    how = draw(MANGLINGS)
    index = draw(OFFSETS) % len(data)
    if how == "truncate":
        return data[:index]
    if how == "pad":
        return data + b" " * SETTINGS.max_body_size  # over the body cap, and still JSON
    return data[:index] + how + data[index:]  # bytes that are not UTF-8


def deeply_nested(depth: int) -> bytes:
    deep = b"[" * depth + b"]" * depth
    return b'{"model":"m","messages":[{"role":"user","content":' + deep + b'}],"session_id":"s1"}'


# what orjson cannot write: numbers out of its range, lone surrogates, keys that are not strings
RAW_BODIES = [
    b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_requests":100000000000000000000000}',
    b'{"model":"m","messages":[{"role":"user","content":1e999}],"session_id":"s1"}',
    b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}],"session_id":"s1"}',
    b'{"model":"m","messages":[{"role":"user","content":"\\u0000"}],"session_id":"s1"}',
    b'{"model":"m","messages":[{"role":"user","content":"hi"}],"session_id":"s\\u0031"}',
    b'{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"session_id":"s1"},"session_id":"s2"}',
    b'{"model":"m","messages":[{"role":"user","content":"hi"}]}  trailing',
    b'\xef\xbb\xbf{"model":"m","messages":[{"role":"user","content":"hi"}],"session_id":"s1"}',
    b'{"model":"m","messages":[{"role":"user","content":"hi"}],"session_id":"s1"}\x00',
    b"{}",
    b" ",
]

bodies = st.one_of(
    st.sampled_from(RAW_BODIES),
    chat_objects().map(dumps),
    chat_objects().map(dumps),
    chat_objects().map(dumps),
    st.builds(with_duplicates, chat_objects(), chat_objects()),
    st.sampled_from(POOLS["values"]).map(dumps),
    st.binary(max_size=32),
    mangled(),
    st.integers(1, 1500).map(deeply_nested),
    st.just(b""),
)

SESSION_HEADERS = [b"session-id", b"x-session-id", b"sessionid", b"session_id"]
HEADER_POOL: list[tuple[bytes, bytes]] = [
    *((name, session_id.encode()) for name in SESSION_HEADERS for session_id in IDS),
    *((b"authorization", value) for value in [b"Bearer key-1", b"Bearer key-2", b"Bearer ", b"bearer key-1"]),
    *((b"authorization", value) for value in [b"Basic a2V5", b"Bearer spcs_nope", b"", b"Bearer \xff\xfe"]),
    (b"x-api-key", b"key-1"),
    (b"x-api-key", b""),
    (b"api-key", b"key-2"),
    (b"content-type", b"application/json"),
    (b"content-type", b"text/plain"),
    *((b"content-length", value) for value in [b"0", b"5", b"99999999999", b"-1", b"x", b""]),
    *((b"transfer-encoding", value) for value in [b"chunked", b"gzip, chunked", b"xchunked", b"chunked, chunked"]),
    (b"idempotency-key", b"k1"),
    (b"idempotency-key", b"\xff"),
    *((b"x-stainless-retry-count", value) for value in [b"0", b"1", b"2", b"x", b""]),
    (b"accept-encoding", b"gzip, br"),
    (b"connection", b"keep-alive, session-id"),
    (b"connection", b"authorization"),
    (b"host", b""),
    (b"x-custom", b"\x01\x7f\xff"),
    (b"Session-Id", b"s1"),  # not lower-cased, as a server would
    (b"", b"empty name"),
]
MANY_HEADERS = [(b"x-h%d" % i, b"v") for i in range(SETTINGS.max_headers + 1)]
BIG_HEADERS = [(b"x-big", b"b" * SETTINGS.max_header_bytes)]


def header_profiles() -> list[list[tuple[bytes, bytes]]]:
    """Header lists: mostly a few pool headers in any order, some over a cap or just under it."""
    rng = random.Random(7)
    profiles = [[], MANY_HEADERS, MANY_HEADERS[:-1], BIG_HEADERS, [(b"x-big", b"b" * (SETTINGS.max_header_bytes - 5))]]
    profiles += [[rng.choice(HEADER_POOL) for _ in range(rng.randrange(1, 6))] for _ in range(400)]
    # a credential and a session id together, as most session requests come, on the seeded sessions too
    credentials = [(b"authorization", b"Bearer key-1"), (b"authorization", b"Bearer key-2"), (b"x-api-key", b"key-1")]
    ids = [b"s1", b"s2", b"a" * 128, b"s3"]
    profiles += [[credential, (b"session-id", session_id)] for credential in credentials for session_id in ids] * 10
    profiles += [[(b"authorization", b"Bearer key-1"), (b"session-id", b"s2")]] * 40  # ended: 409
    return profiles


header_lists = st.sampled_from(header_profiles())

PATH_TEMPLATES = [
    "/v1/sessions/{id}",
    "/v1/sessions/{id}/",
    "/v1/sessions/{id}/messages",
    "/v1/sessions/{id}/end",
    "/v1/sessions/{id}/cancel",
    "/v1/sessions/{id}/fork",
    "/v1/sessions/{id}/unknown",
]
PATHS = [
    "/v1/chat/completions",
    "/chat/completions",
    "/openai/deployments/d/chat/completions",
    "/v1/chat/completions/",
    "/v1/sessions",
    "/v1/sessions/",
    "/v1/sessions/openapi.json",
    "/v1/sessionsx",
    "/healthz",
    "/readyz",
    "/v1/models",
    "/",
    "",
    "/\u00fc/%00",
    *(template.replace("{id}", session_id) for template in PATH_TEMPLATES for session_id in IDS),
]
METHODS = ["POST"] * 6 + ["GET", "GET", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "BREW"]
QUERIES = [
    *[b""] * 6,
    *(b"limit=1", b"limit=0", b"limit=101", b"limit=x", b"order=asc", b"order=x", b"after=s1", b"before=x"),
    *(b"status=ended", b"metadata[k]=v", b"metadata%5Bk%5D=v", b"limit=1&after=s2&order=desc", b"%ff=%fe"),
]
# (method, path, query) in one draw: the product is small enough to list
TARGET_LIST = list(itertools.product(METHODS, PATHS, QUERIES))
TARGETS = st.sampled_from(TARGET_LIST + [("POST", "/v1/chat/completions", b"")] * (len(TARGET_LIST) // 2))
# where the body is cut into ASGI messages, as fractions of its length
CUTS = st.sampled_from([(), (), (), (0.0,), (1.0,), (0.5,), (0.1, 0.9), (0.0, 0.0), (0.01, 0.5), (0.99,)])


@st.composite
def requests(draw: st.DrawFn) -> Request:
    body = draw(bodies)
    cuts = [int(fraction * len(body)) for fraction in draw(CUTS)]
    chunks = [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    method, path, query = draw(TARGETS)
    return Request(method, path, query, draw(header_lists), chunks)


# --- 1. generated requests --------------------------------------------------------------------------


def seed(headers: list[tuple[bytes, bytes]], content: str, **extra: Any) -> Request:
    body = dumps({"model": "m", "messages": [{"role": "user", "content": content}], **extra})
    return Request("POST", "/v1/chat/completions", b"", headers, [body])


KEY_1, KEY_2 = (b"authorization", b"Bearer key-1"), (b"authorization", b"Bearer key-2")
# the sessions every example starts with, so that one request can resume, replace, or hit an ended one
SEEDS = [
    seed([KEY_1, (b"session-id", b"s1")], "hi"),
    seed([(b"x-api-key", b"key-1"), (b"session-id", b"s1")], "more"),  # the same credential
    seed([KEY_2, (b"session-id", b"s1")], "two"),  # the same id, another credential
    seed([KEY_1], "s2", session_id="s2"),
    Request("POST", "/v1/sessions/s2/end", b"", [KEY_1], []),
    seed([(b"session-id", b"a" * 128)], "x", stream=True),  # anonymous
]


def proxy(store: MemoryStore, upstream: FakeUpstream) -> ProxyApp:
    app = ProxyApp(SETTINGS, store=store)
    app.sessions = SessionMiddleware(upstream, store, settings=SETTINGS)  # the fake upstream, not aiohttp
    return app


@pytest.fixture(scope="module")
def seeded_store() -> MemoryStore:
    store = MemoryStore(ttl=None)
    loop = asyncio.new_event_loop()
    try:
        for request in SEEDS:
            exchange = loop.run_until_complete(run_request(proxy(store, FakeUpstream()), request))
            assert exchange.status == 200, exchange.body
    finally:
        loop.close()
    assert sorted(stored_counts(store).values()) == [2, 2, 2, 4]
    return store


class Checker:
    """Runs generated requests on the seeded sessions, one at a time, and checks each."""

    def __init__(self, seeded: MemoryStore) -> None:
        self.seeded = seeded
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self._reset()

    def _reset(self) -> None:
        self.store = copy.deepcopy(self.seeded)
        self.upstream = FakeUpstream()
        self.app = proxy(self.store, self.upstream)

    async def check(self, request: Request) -> None:
        store = self.store
        before, calls = stored_counts(store), self.upstream.calls
        exchange = await run_request(self.app, request)
        status = exchange.status
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        assert status < 500, (status, exchange.body, request)
        assert not store._leases, ("a lease outlived its request", request)
        if status >= 400:
            assert stored_counts(store) == before, (status, exchange.body, request)
            assert self.upstream.calls == calls, (status, exchange.body, request)
            error = orjson.loads(exchange.body)
            assert set(error["error"]) == {"message", "type", "param", "code"}, request
        else:
            # each example starts from the seeded sessions: a refused request changed nothing,
            # anything else may have
            self._reset()


@pytest.mark.slow
def test_generated_requests_never_get_a_5xx_nor_store_a_refused_turn(seeded_store: MemoryStore) -> None:
    checker = Checker(seeded_store)
    loop = asyncio.new_event_loop()

    @settings(
        max_examples=REQUEST_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(requests())
    def property_(request: Request) -> None:
        loop.run_until_complete(checker.check(request))

    try:
        property_()
    finally:
        loop.close()
    assert checker.requests >= REQUEST_EXAMPLES
    # the generator reaches every kind of outcome, not only the first refusal
    assert {200, 201, 400, 401, 404, 405, 413, 431}.issubset(checker.statuses), checker.statuses


# --- 2. fixture streams in random chunkings through the tap --------------------------------------

STREAMS = Path(__file__).parent / "fixtures" / "streams"


def whole_reply(stream: bytes) -> AssistantReply | None:
    recorder = ChatStreamRecorder()
    recorder.feed(stream)
    return recorder.result() if recorder.done else None


FIXTURES = {path.name: path.read_bytes() for path in sorted(STREAMS.glob("*.sse"))}
COMPLETE = {name: (stream, whole_reply(stream)) for name, stream in FIXTURES.items() if whole_reply(stream)}


def test_enough_fixtures_complete() -> None:
    assert len(COMPLETE) >= 8
    assert {"plain_text.sse", "parallel_tool_calls.sse", "multibyte_utf8.sse"} <= set(COMPLETE)


def many_cuts(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(2600) for _ in range(count)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(min(cut, len(data)) for cut in cuts)
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=True)]


async def through_tap(start: Message, bodies: list[Message]) -> tuple[list[Message], list[AssistantReply]]:
    sent: list[Message] = []
    commits: list[AssistantReply] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def commit(reply: AssistantReply) -> bool:
        commits.append(reply)
        return True

    tap = ResponseTap(send, "sess-fuzz", commit, OPENAI, streaming=False)
    await tap.send_and_record(start)
    for message in bodies:
        await tap.send_and_record(message)
    return sent, commits


@pytest.fixture(scope="module")
def event_loop_for_chunkings() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_fixture_streams_in_random_chunkings(event_loop_for_chunkings: asyncio.AbstractEventLoop) -> None:
    seen: dict[str, int] = {}

    @settings(max_examples=CHUNKING_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        name=st.sampled_from(sorted(COMPLETE)),
        cuts=st.one_of(
            st.lists(st.integers(0, 2600), max_size=12),
            st.builds(many_cuts, st.randoms(use_true_random=True), st.sampled_from([50, 300, 1000])),
            st.sampled_from([[], list(range(1, 2600)), list(range(0, 2600, 7))]),  # whole, byte by byte, 7 bytes
        ),
        compressed=st.booleans(),
    )
    def property_(name: str, cuts: list[int], compressed: bool) -> None:
        stream, expected = COMPLETE[name]
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        if compressed:
            headers.append((b"content-encoding", b"gzip"))
        data = gzip.compress(stream, mtime=0) if compressed else stream
        chunks = split(data, cuts)
        start = {"type": "http.response.start", "status": 200, "headers": headers}
        bodies = [{"type": "http.response.body", "body": chunk, "more_body": True} for chunk in chunks]
        bodies.append({"type": "http.response.body", "body": b"", "more_body": False})
        sent, commits = event_loop_for_chunkings.run_until_complete(through_tap(start, bodies))
        assert sent[0] == {**start, "headers": [*headers, (b"x-session-id", b"sess-fuzz")]}
        assert sent[1:] == bodies  # every message, unchanged and in order
        assert commits == [expected]
        seen[name] = seen.get(name, 0) + 1

    property_()
    assert sum(seen.values()) >= 1_000
    assert set(seen) == set(COMPLETE)
