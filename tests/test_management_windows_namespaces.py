"""The management API's per-session history windows (through a real stack, over both stores) and its
namespaces (ManagementAPI called directly over ASGI with ``namespace=``, over both stores). Every
response is checked against the OpenAPI document of the prefix it was served at."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest

import test_store_contract as contract
from harness.openapi_check import OpenAPIChecker
from harness.stack import Stack, running_stack, store_url_for
from statefulproxy.asgi.management import ManagementAPI
from statefulproxy.asgi.openapi import openapi_document
from statefulproxy.sessions.identity import Grant
from statefulproxy.stores import NewSession, Store, TurnWrite
from statefulproxy.types import Receive, Scope, Send
from test_store_contract import StoreFactory, message

PREFIX = "/v1/sessions"
DOC1, DOC2 = "/document/d1", "/document/d2"

# --- history windows, end to end ----------------------------------------------------------------


@pytest.fixture(scope="module", params=["memory", "redis"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with running_stack(store_url_for(request.param, redis_url), upstream_api_key="sk-upstream") as running:
        yield running


class Api:
    """Plain HTTP under a fresh credential; every management response is checked against the document."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.checker = OpenAPIChecker(openapi_document(PREFIX))
        self.http = stack.http(f"key-{uuid.uuid4().hex}")

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, status: int, body: Any = None) -> Any:
        response = self.http.request(method, path, json=body)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        self.checker.check_response(response)
        return response.json()

    def chat(self, session_id: str, text: str) -> list[dict[str, Any]]:
        """One turn; the messages the upstream received."""
        body = {"model": "m", "messages": [{"role": "user", "content": text}]}
        response = self.http.post("/v1/chat/completions", json=body, headers={"session-id": session_id})
        assert response.status_code == 200, response.text
        forwarded: list[dict[str, Any]] = self.stack.upstream.chat_requests[-1].json["messages"]
        return forwarded

    def stored(self, session_id: str) -> list[dict[str, Any]]:
        data = self.call("GET", f"{PREFIX}/{session_id}/messages", 200)["data"]
        return [{"role": item["role"], "content": item["content"]} for item in data]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_a_session_object_shows_its_window_and_namespace(stack: Stack) -> None:
    with Api(stack) as api:
        bare = api.call("POST", PREFIX, 201)
        assert (bare["history_window"], bare["namespace"]) == (None, None)
        windowed = api.call("POST", PREFIX, 201, {"history_window": {"max_messages": 6, "max_tokens": 2000}})
        assert windowed["history_window"] == {"max_messages": 6, "max_tokens": 2000}
        assert api.call("GET", f"{PREFIX}/{windowed['id']}", 200)["history_window"] == windowed["history_window"]
        omitted = api.call("POST", PREFIX, 201, {"history_window": {"max_tokens": 300}})
        assert omitted["history_window"] == {"max_messages": 0, "max_tokens": 300}  # omitted: 0, no limit
        nulls = api.call("POST", PREFIX, 201, {"history_window": {"max_messages": None, "max_tokens": 5.0}})
        assert nulls["history_window"] == {"max_messages": 0, "max_tokens": 5}
        empty = api.call("POST", PREFIX, 201, {"history_window": {}})
        assert empty["history_window"] == {"max_messages": 0, "max_tokens": 0}  # overrides the settings: no limit
        assert api.call("POST", PREFIX, 201, {"history_window": None})["history_window"] is None
        listed = api.call("GET", PREFIX, 200)["data"]
        assert [session["history_window"] for session in listed][-2:] == [{"max_messages": 6, "max_tokens": 2000}, None]


def test_the_window_limits_what_is_forwarded_and_update_changes_it(stack: Stack) -> None:
    with Api(stack) as api:
        session_id = api.call("POST", PREFIX, 201, {"history_window": {"max_messages": 2}})["id"]
        assert api.chat(session_id, "one") == [user("one")]
        before = api.stored(session_id)
        assert api.chat(session_id, "two") == [*before, user("two")]  # two messages: all of it still
        forwarded = api.chat(session_id, "three")
        stored = api.stored(session_id)
        assert len(stored) == 6  # the window limits what is sent, never what is stored
        assert forwarded == [*stored[2:4], user("three")]  # the last two stored messages: user "two" and its reply

        title_only = api.call("POST", f"{PREFIX}/{session_id}", 200, {"title": "T"})
        assert title_only["history_window"] == {"max_messages": 2, "max_tokens": 0}  # absent: kept

        removed = api.call("POST", f"{PREFIX}/{session_id}", 200, {"history_window": None})
        assert (removed["history_window"], removed["title"]) == (None, "T")
        assert api.chat(session_id, "four") == [*stored, user("four")]  # the settings' window: no limit

        one = api.call("POST", f"{PREFIX}/{session_id}", 200, {"history_window": {"max_messages": 1}})
        assert one["history_window"] == {"max_messages": 1, "max_tokens": 0}
        assert api.chat(session_id, "five") == [user("five")]  # no window of one message starts at a user message
        assert len(api.stored(session_id)) == 10


def test_a_fork_copies_the_window(stack: Stack) -> None:
    with Api(stack) as api:
        source = api.call("POST", PREFIX, 201, {"history_window": {"max_messages": 2, "max_tokens": 900}})
        for text in ("one", "two", "three"):
            api.chat(source["id"], text)
        fork = api.call("POST", f"{PREFIX}/{source['id']}/fork", 201)
        assert fork["history_window"] == {"max_messages": 2, "max_tokens": 900}
        assert fork["namespace"] is None
        stored = api.stored(fork["id"])
        assert api.chat(fork["id"], "four") == [*stored[-2:], user("four")]
        plain = api.call("POST", PREFIX, 201)
        assert api.call("POST", f"{PREFIX}/{plain['id']}/fork", 201)["history_window"] is None


BAD_WINDOWS = [
    3,
    "6",
    [6, 0],
    {"max_messages": -1},
    {"max_tokens": -1},
    {"max_messages": 1.5},
    {"max_messages": True},
    {"max_messages": "6"},
    {"max_messages": 2**31},
    {"max_turns": 6},
]


@pytest.mark.parametrize("window", BAD_WINDOWS, ids=repr)
def test_bad_windows_are_400s_the_document_refuses_too(stack: Stack, window: object) -> None:
    with Api(stack) as api:
        session_id = api.call("POST", PREFIX, 201, {"history_window": {"max_messages": 4}})["id"]
        for path, template in ((PREFIX, PREFIX), (f"{PREFIX}/{session_id}", PREFIX + "/{session_id}")):
            assert api.checker.request_body_errors("POST", template, {"history_window": window})
            error = api.call("POST", path, 400, {"history_window": window})["error"]
            assert error["param"].startswith("history_window")
        assert api.call("GET", f"{PREFIX}/{session_id}", 200)["history_window"] == {"max_messages": 4, "max_tokens": 0}
        assert len(api.call("GET", PREFIX, 200)["data"]) == 1


@pytest.mark.parametrize(
    "window",
    [
        None,
        {},
        {"max_messages": None},
        {"max_messages": 0, "max_tokens": 0},
        {"max_tokens": 2**31 - 1},
        {"max_messages": 3.0},
    ],
    ids=repr,
)
def test_the_document_and_the_proxy_agree_on_good_windows(stack: Stack, window: object) -> None:
    with Api(stack) as api:
        for template in (PREFIX, PREFIX + "/{session_id}"):
            assert api.checker.request_body_errors("POST", template, {"history_window": window}) == []
        session_id = api.call("POST", PREFIX, 201, {"history_window": window})["id"]
        api.call("POST", f"{PREFIX}/{session_id}", 200, {"history_window": window})


# --- namespaces, ManagementAPI over ASGI ---------------------------------------------------------

# the contract suite's fixtures: a store of each backend, left clean behind
backend, store_url, make_store = contract.backend, contract.store_url, contract.make_store
NAMESPACED = re.compile(r"(?P<namespace>/document/[^/]+)/sessions(?P<rest>(/.*)?)")
SESSION_CALLS = [
    ("GET", ""),
    ("POST", ""),
    ("DELETE", ""),
    ("GET", "/messages"),
    ("DELETE", "/messages"),
    ("POST", "/end"),
    ("POST", "/cancel"),
    ("POST", "/fork"),
]


class NamespacedApp:
    """The API at /v1/sessions (every session of the owner) and at /document/{doc}/sessions (that
    namespace's). The credential is the owner; ``x-grant`` stands for a client secret of that session."""

    def __init__(self, store: Store) -> None:
        self.api = ManagementAPI(store, self.owner_for, PREFIX, "sk-upstream")

    @staticmethod
    async def owner_for(scope: Scope) -> str:
        authorization: bytes = dict(scope["headers"]).get(b"authorization", b"")
        return "owner:" + authorization.decode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        grant = None
        if b"x-grant" in headers:
            grant = Grant(await self.owner_for(scope), headers[b"x-grant"].decode())
        found = NAMESPACED.fullmatch(scope["path"])
        if found is None:
            await self.api(scope, receive, send, scope["path"].removeprefix(PREFIX), grant)
        else:
            await self.api(scope, receive, send, found["rest"], grant, namespace=found["namespace"])


class Client:
    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.http = http
        self.checkers = {prefix: OpenAPIChecker(openapi_document(prefix)) for prefix in (PREFIX, DOC1 + "/sessions")}

    async def call(self, method: str, path: str, status: int, body: Any = None, **headers: str) -> Any:
        response = await self.http.request(method, path, json=body, headers=headers)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        prefix = DOC1 + "/sessions" if path.startswith(DOC1) else PREFIX
        if not path.startswith(DOC2):  # DOC2 is served the same way: one document is enough
            self.checkers[prefix].check_response(response)
        return response.json()


@pytest.fixture
async def client(make_store: StoreFactory) -> AsyncIterator[Client]:
    store = make_store(ttl=3600)
    transport = httpx2.ASGITransport(app=NamespacedApp(store))
    async with httpx2.AsyncClient(
        transport=transport, base_url="http://proxy", headers={"authorization": "Bearer k1"}
    ) as http:
        yield Client(http)


async def made(client: Client) -> dict[str, str]:
    """One session in DOC1, one in DOC2, one in none: name -> id."""
    return {
        "d1": (await client.call("POST", f"{DOC1}/sessions", 201, {"title": "one"}))["id"],
        "d2": (await client.call("POST", f"{DOC2}/sessions", 201, {"title": "two"}))["id"],
        "none": (await client.call("POST", PREFIX, 201, {"title": "none"}))["id"],
    }


@pytest.mark.anyio
async def test_create_under_a_namespace_puts_the_session_in_it(client: Client) -> None:
    ids = await made(client)
    expected = {"d1": DOC1, "d2": DOC2, "none": None}
    for name, session_id in ids.items():
        assert (await client.call("GET", f"{PREFIX}/{session_id}", 200))["namespace"] == expected[name]
    windowed = await client.call("POST", f"{DOC1}/sessions", 201, {"history_window": {"max_messages": 3}})
    assert (windowed["namespace"], windowed["history_window"]) == (DOC1, {"max_messages": 3, "max_tokens": 0})
    refused = await client.call("POST", f"{DOC1}/sessions", 400, {"namespace": DOC2})  # not a request field
    assert refused["error"]["param"] == "namespace"


@pytest.mark.anyio
async def test_a_namespace_lists_only_its_sessions(client: Client) -> None:
    ids = await made(client)
    more = [(await client.call("POST", f"{DOC1}/sessions", 201))["id"] for _ in range(3)]
    in_doc1 = [*more[::-1], ids["d1"]]
    assert [s["id"] for s in (await client.call("GET", f"{DOC1}/sessions", 200))["data"]] == in_doc1
    assert [s["id"] for s in (await client.call("GET", f"{DOC2}/sessions", 200))["data"]] == [ids["d2"]]
    everything = (await client.call("GET", PREFIX, 200))["data"]
    assert {s["id"] for s in everything} == {*in_doc1, ids["d2"], ids["none"]}

    page = await client.call("GET", f"{DOC1}/sessions?limit=2", 200)
    assert ([s["id"] for s in page["data"]], page["has_more"]) == (in_doc1[:2], True)
    rest = await client.call("GET", f"{DOC1}/sessions?limit=2&after={page['last_id']}", 200)
    assert ([s["id"] for s in rest["data"]], rest["has_more"]) == (in_doc1[2:], False)
    for foreign in (ids["d2"], ids["none"]):  # a cursor of another namespace is no cursor here
        error = (await client.call("GET", f"{DOC1}/sessions?after={foreign}", 400))["error"]
        assert error["message"] == f"No session with id '{foreign}' to page from."
    other_owner = await client.call("GET", f"{DOC1}/sessions", 200, authorization="Bearer k2")
    assert other_owner["data"] == []


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "suffix"), SESSION_CALLS)
async def test_a_session_of_another_namespace_is_a_404_like_a_missing_one(
    client: Client, method: str, suffix: str
) -> None:
    ids = await made(client)
    missing = await client.call(method, f"{DOC1}/sessions/never-made{suffix}", 404)
    assert missing == {
        "error": {
            "message": "No session found with id 'never-made'.",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }
    body = {"title": "taken over", "history_window": None} if (method, suffix) == ("POST", "") else None
    for foreign in (ids["d2"], ids["none"]):
        answer = await client.call(method, f"{DOC1}/sessions/{foreign}{suffix}", 404, body)
        assert answer == {"error": {**missing["error"], "message": f"No session found with id '{foreign}'."}}
    # nothing happened to them: no change, no fork
    for name in ("d2", "none"):
        kept = await client.call("GET", f"{PREFIX}/{ids[name]}", 200)
        assert (kept["title"], kept["status"]) == ({"d2": "two", "none": "none"}[name], "active")
    assert len((await client.call("GET", PREFIX, 200))["data"]) == 3
    # a method the path does not allow is a 405 there too, as for a missing session
    await client.call("PUT", f"{DOC1}/sessions/{ids['d2']}{suffix}", 405)


@pytest.mark.anyio
async def test_every_call_works_on_a_session_of_its_own_namespace(client: Client, make_store: StoreFactory) -> None:
    ids = await made(client)
    session_id = ids["d1"]
    base = f"{DOC1}/sessions/{session_id}"
    store = make_store.stores[0]
    history = [message("system", "s0"), message("user", "u1"), message("assistant", "a1")]
    await store.commit("owner:Bearer k1", session_id, TurnWrite(head=[], tail=history, tail_leading_system=1))

    assert (await client.call("GET", base, 200))["message_count"] == 3
    assert len((await client.call("GET", f"{base}/messages", 200))["data"]) == 3
    updated = await client.call("POST", base, 200, {"title": "T", "history_window": {"max_tokens": 10}})
    assert (updated["title"], updated["history_window"], updated["namespace"]) == (
        "T",
        {"max_messages": 0, "max_tokens": 10},
        DOC1,
    )
    fork = await client.call("POST", f"{base}/fork", 201)
    assert (fork["namespace"], fork["history_window"], fork["message_count"]) == (DOC1, updated["history_window"], 3)
    assert fork["id"] in [s["id"] for s in (await client.call("GET", f"{DOC1}/sessions", 200))["data"]]
    assert (await client.call("DELETE", f"{base}/messages", 200))["message_count"] == 0
    assert (await client.call("POST", f"{base}/end", 200))["status"] == "ended"
    assert (await client.call("DELETE", f"{base}/messages", 409))["error"]["code"] == "session_ended"
    assert (await client.call("DELETE", base, 200))["deleted"] is True
    await client.call("GET", base, 404)


@pytest.mark.anyio
async def test_without_a_namespace_every_session_is_reachable_and_a_fork_stays_in_its_sources(
    client: Client, make_store: StoreFactory
) -> None:
    ids = await made(client)
    store = make_store.stores[0]
    chat_made = NewSession(namespace=DOC2, history_window=(5, 0))  # as a chat turn under DOC2 creates it
    await store.commit("owner:Bearer k1", "chat-1", contract.turn("u1", "a1", create=chat_made))
    for session_id in (*ids.values(), "chat-1"):
        await client.call("GET", f"{PREFIX}/{session_id}", 200)
    fork = await client.call("POST", f"{PREFIX}/chat-1/fork", 201)
    assert (fork["namespace"], fork["history_window"]) == (DOC2, {"max_messages": 5, "max_tokens": 0})
    in_doc2 = [s["id"] for s in (await client.call("GET", f"{DOC2}/sessions", 200))["data"]]
    assert in_doc2 == [fork["id"], "chat-1", ids["d2"]]
    await client.call("GET", f"{DOC1}/sessions/chat-1", 404)
    renamed = await client.call("POST", f"{PREFIX}/{ids['d1']}", 200, {"title": "from the root"})
    assert (renamed["title"], renamed["namespace"]) == ("from the root", DOC1)


@pytest.mark.anyio
async def test_a_client_secret_reads_its_session_only_in_its_namespace(client: Client) -> None:
    ids = await made(client)
    mine = ids["d2"]
    assert (await client.call("GET", f"{DOC2}/sessions/{mine}", 200, **{"x-grant": mine}))["id"] == mine
    await client.call("GET", f"{DOC2}/sessions/{mine}/messages", 200, **{"x-grant": mine})
    await client.call("GET", f"{DOC1}/sessions/{mine}", 404, **{"x-grant": mine})
    await client.call("GET", f"{DOC1}/sessions/{mine}/messages", 404, **{"x-grant": mine})
    await client.call("GET", f"{DOC2}/sessions", 403, **{"x-grant": mine})
