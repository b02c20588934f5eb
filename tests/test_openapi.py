"""The management API's OpenAPI document: valid OpenAPI 3.1, strict, and true of every real response."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import openapi_spec_validator
import pytest

from harness import upstream as reply
from harness.openapi_check import ERROR_RESPONSES, OpenAPIChecker, OpenAPIMismatch
from harness.stack import Stack, running_stack
from statefulproxy.asgi.openapi import OPENAPI_PATH_SUFFIX, openapi_document

PREFIX = "/v1/sessions"
CUSTOM_PREFIX = "/api/v2/chat-sessions"
SESSION = PREFIX + "/{session_id}"
UPSTREAM_KEY = "sk-upstream"
ERROR = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}
OPERATIONS = {
    ("POST", PREFIX),
    ("GET", PREFIX),
    ("GET", PREFIX + OPENAPI_PATH_SUFFIX),
    ("GET", SESSION),
    ("POST", SESSION),
    ("DELETE", SESSION),
    ("GET", SESSION + "/messages"),
    ("DELETE", SESSION + "/messages"),
    ("POST", SESSION + "/end"),
    ("POST", SESSION + "/cancel"),
    ("POST", SESSION + "/fork"),
}


def a_session(**changes: Any) -> dict[str, Any]:
    return {
        "id": "sess_0123",
        "object": "session",
        "title": None,
        "status": "active",
        "message_count": 0,
        "created_at": 1_700_000_000,
        "last_active_at": 1_700_000_000,
        "expires_at": None,
        "expires_after": None,
        "rate_limits": {"max_requests_per_1_minute": None},
        "max_requests": None,
        "request_count": 0,
        "history_window": None,
        "namespace": None,
        "metadata": {},
        "usage": {},
        **changes,
    }


# --- the document itself


@pytest.mark.parametrize("prefix", [PREFIX, CUSTOM_PREFIX])
def test_the_document_is_valid_openapi_3_1_with_every_endpoint(prefix: str) -> None:
    document = openapi_document(prefix)
    openapi_spec_validator.validate(document)
    assert document["openapi"] == "3.1.0"
    operations = set(OpenAPIChecker(document).operations())
    assert operations == {(method, prefix + path.removeprefix(PREFIX)) for method, path in OPERATIONS}


def test_a_broken_reference_fails_validation() -> None:
    # the validation above is worth something: it resolves every $ref
    document = openapi_document()
    document["paths"][PREFIX]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/Missing"
    }
    with pytest.raises(Exception, match="Missing"):
        openapi_spec_validator.validate(document)


def test_each_call_builds_its_own_document() -> None:
    first = openapi_document()
    first["components"]["schemas"]["Session"]["required"].clear()
    assert openapi_document()["components"]["schemas"]["Session"]["required"]
    assert openapi_document() == openapi_document()


def walk_objects(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if "properties" in schema:
            yield where, schema
        for key, value in schema.items():
            yield from walk_objects(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from walk_objects(value, f"{where}/{index}")


def test_every_object_is_closed_and_requires_only_what_it_defines() -> None:
    schemas = openapi_document()["components"]["schemas"]
    objects = list(walk_objects(schemas, ""))
    assert len(objects) > 15
    for where, schema in objects:
        assert schema["additionalProperties"] is False, where
        assert set(schema["required"]) <= set(schema["properties"]), where
    for name in ("Session", "CreatedSession"):
        optional = set(schemas[name]["properties"]) - set(schemas[name]["required"])
        assert optional == (set() if name == "Session" else {"client_secret"})


def test_every_error_response_uses_the_error_schema_and_429_names_retry_after() -> None:
    document = openapi_document()
    checker = OpenAPIChecker(document)
    assert set(document["components"]["responses"]) == set(ERROR_RESPONSES.values())
    statuses: set[int] = set()
    for method, template in checker.operations():
        for status, response in checker.operation(method, template)["responses"].items():  # type: ignore[index]
            if int(status) >= 400:
                statuses.add(int(status))
                assert checker.resolve(response)["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }
    # 405 only arises outside the operations; 429 on creating a session past the credential's cap
    assert statuses == {400, 401, 403, 404, 409, 413, 429, 503}
    rate_limited = checker.resolve(document["components"]["responses"]["RateLimited"])
    assert checker.resolve(rate_limited["headers"]["Retry-After"])["required"] is True


# --- the checker catches drift


def test_the_checker_accepts_what_the_document_says() -> None:
    checker = OpenAPIChecker(openapi_document())
    checker.check("GET", SESSION, 200, a_session(expires_after={"anchor": "created_at", "seconds": 60}))
    checker.check("POST", PREFIX, 201, a_session(client_secret={"value": "spcs_abc", "expires_at": 1}))
    checker.check("GET", SESSION, 404, ERROR)
    checker.check("PUT", SESSION, 405, ERROR)  # a method the document does not list
    checker.check_error(429, ERROR, {"Retry-After": "12"})
    assert checker.template_for(PREFIX + "/openapi.json") == PREFIX + "/openapi.json"
    assert checker.template_for(PREFIX + "/sess_1/fork") == SESSION + "/fork"
    assert checker.template_for(PREFIX + "/a/b") is None


@pytest.mark.parametrize(
    ("method", "template", "status", "body", "headers", "complaint"),
    [
        ("GET", SESSION, 200, a_session(extra=1), None, "'extra' was unexpected"),
        ("GET", SESSION, 200, a_session(client_secret={"value": "spcs_a", "expires_at": 1}), None, "client_secret"),
        ("GET", SESSION, 200, {k: v for k, v in a_session().items() if k != "usage"}, None, "'usage' is a required"),
        ("GET", SESSION, 200, a_session(status="paused"), None, "'paused' is not one of"),
        ("GET", SESSION, 200, a_session(metadata={"k": 1}), None, "1 is not of type 'string'"),
        ("GET", SESSION, 201, a_session(), None, "status 201 is not documented"),
        ("PUT", SESSION, 200, a_session(), None, "must be 405"),
        ("GET", SESSION, 404, {"error": {"message": "m", "type": "t"}}, None, "'param' is a required"),
        ("GET", SESSION, 404, {"detail": "not found"}, None, "'error' is a required"),
        ("POST", PREFIX, 201, a_session(client_secret={"value": "sk-1", "expires_at": 1}), None, "does not match"),
        ("GET", PREFIX, 200, {"object": "list", "data": [a_session()]}, None, "'first_id' is a required"),
        ("GET", SESSION + "/messages", 200, {"object": "list"}, None, "'data' is a required"),
    ],
)
def test_the_checker_refuses_drift(
    method: str, template: str, status: int, body: Any, headers: dict[str, str] | None, complaint: str
) -> None:
    checker = OpenAPIChecker(openapi_document())
    with pytest.raises(OpenAPIMismatch, match=complaint):
        checker.check(method, template, status, body, headers)


@pytest.mark.parametrize(
    ("headers", "complaint"), [({}, "Retry-After is missing"), ({"retry-after": "soon"}, "not an")]
)
def test_the_checker_wants_an_integer_retry_after_on_429(headers: dict[str, str], complaint: str) -> None:
    with pytest.raises(OpenAPIMismatch, match=complaint):
        OpenAPIChecker(openapi_document()).check_error(429, ERROR, headers)


def message(**fields: Any) -> dict[str, Any]:
    return {"id": "msg_1", "object": "session.message", "created_at": 1, **fields}


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        (message(role="user", content="hi"), True),
        (message(role="user", content=[{"type": "text", "text": "hi"}], name="ann"), True),
        (
            message(
                role="assistant",
                content=None,
                tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            ),
            True,
        ),
        (message(role="tool", content="42", tool_call_id="c"), True),
        (message(role="assistant", content="", refusal="no", reasoning="hmm"), True),
        (message(role="assistant", content="", reasoning_content="hmm"), False),
        (message(role="assistant", content="", annotations=[]), False),
        (message(role="user"), False),
    ],
)
def test_message_objects(body: dict[str, Any], valid: bool) -> None:
    checker = OpenAPIChecker(openapi_document())
    envelope = {"object": "list", "data": [body], "first_id": "msg_1", "last_id": "msg_1", "has_more": False}
    if valid:
        checker.check("GET", SESSION + "/messages", 200, envelope)
    else:
        with pytest.raises(OpenAPIMismatch):
            checker.check("GET", SESSION + "/messages", 200, envelope)


# --- every real response, end to end


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack("memory://", upstream_api_key=UPSTREAM_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def checker() -> OpenAPIChecker:
    return OpenAPIChecker(openapi_document(PREFIX))


class Api:
    """Plain HTTP to the proxy under a fresh credential; every response is checked against the document."""

    def __init__(self, stack: Stack, checker: OpenAPIChecker, api_key: str | None = None) -> None:
        self.checker = checker
        self.api_key = api_key or f"key-{uuid.uuid4().hex}"
        self.http = stack.http(self.api_key)
        self.seen: set[tuple[str, str, int]] = set()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, status: int, **options: Any) -> Any:
        response = self.http.request(method, path, **options)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        template = self.checker.template_for(response.request.url.path)
        if template is None:  # a chat turn: only its errors are described, by the shared error responses
            if status >= 400:
                self.checker.check_error(status, response.json(), response.headers)
            return response.json()
        self.checker.check_response(response, template)
        self.seen.add((method, template, status))
        return response.json()

    def chat(self, session_id: str, status: int, text: str = "hi") -> Any:
        body = {"model": "m", "messages": [{"role": "user", "content": text}]}
        return self.call("POST", "/v1/chat/completions", status, json=body, headers={"session-id": session_id})


def sdk_turns(stack: Stack, api_key: str, session_id: str) -> None:
    """Three turns through the openai SDK whose history holds every optional message field."""
    stack.upstream.push(
        reply.text("hello", reasoning="thinking"),
        reply.tool_calls([("call_1", "lookup", '{"q": 1}')]),
        reply.refusal("I cannot."),
    )
    with stack.client(api_key, default_headers={"session-id": session_id}) as client:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"}]
        )
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "look it up"}])
        client.chat.completions.create(model="m", messages=[{"role": "tool", "tool_call_id": "call_1", "content": "4"}])


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


def test_every_operation_answers_as_documented(stack: Stack, checker: OpenAPIChecker) -> None:
    with Api(stack, checker) as api:
        assert api.call("GET", PREFIX + OPENAPI_PATH_SUFFIX, 200) == openapi_document(PREFIX)

        bare = api.call("POST", PREFIX, 201)  # no body at all
        assert "client_secret" not in bare
        assert bare["status"] == "active"
        empty = api.call("POST", PREFIX, 201, json={})
        full = api.call(
            "POST",
            PREFIX,
            201,
            json={
                "title": "Planning",
                "metadata": {"team": "a", "tier": "gold"},
                "expires_after": {"anchor": "created_at", "seconds": 3600},
                "rate_limits": {"max_requests_per_1_minute": 5},
                "max_requests": 10,
            },
        )
        assert full["expires_at"] == full["created_at"] + 3600
        assert full["max_requests"] == 10
        with_secret = api.call("POST", PREFIX, 201, json={"client_secret": {"expires_after": 600}})
        assert with_secret["client_secret"]["value"].startswith("spcs_")
        assert abs(with_secret["client_secret"]["expires_at"] - (time.time() + 600)) < 5
        object_form = {"client_secret": {"expires_after": {"anchor": "created_at", "seconds": 60}}}
        assert "client_secret" in api.call("POST", PREFIX, 201, json=object_form)
        newest_first = [s["id"] for s in reversed([bare, empty, full, with_secret])]

        listed = api.call("GET", PREFIX, 200)
        assert ids(listed)[1:] == newest_first
        assert listed["has_more"] is False
        first = api.call("GET", PREFIX, 200, params={"limit": 2})
        assert first["has_more"] is True
        assert first["last_id"] == ids(listed)[1]
        second = api.call("GET", PREFIX, 200, params={"limit": 2, "after": first["last_id"]})
        assert ids(second) == ids(listed)[2:4]
        assert ids(api.call("GET", PREFIX, 200, params={"limit": 2, "before": second["first_id"]})) == ids(first)
        assert ids(api.call("GET", PREFIX, 200, params={"order": "asc"})) == ids(listed)[::-1]
        assert ids(api.call("GET", PREFIX, 200, params={"status": "ended"})) == []
        assert ids(api.call("GET", PREFIX, 200, params={"metadata[team]": "a", "status": "active"})) == [full["id"]]
        assert ids(api.call("GET", PREFIX, 200, params={"q": "PLAN", "metadata[tier]": "gold"})) == [full["id"]]
        assert ids(api.call("GET", PREFIX, 200, params={"q": "PLAN", "metadata[tier]": "silver"})) == []

        assert api.call("GET", f"{PREFIX}/{full['id']}", 200)["title"] == "Planning"
        updated = api.call("POST", f"{PREFIX}/{full['id']}", 200, json={"title": "Renamed", "metadata": {"k": "v"}})
        assert (updated["title"], updated["metadata"]) == ("Renamed", {"k": "v"})
        assert api.call("POST", f"{PREFIX}/{empty['id']}", 200)["title"] is None  # no body: nothing changes

        sdk_turns(stack, api.api_key, full["id"])
        history = api.call("GET", f"{PREFIX}/{full['id']}/messages", 200)
        roles = [m["role"] for m in history["data"]]
        assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant"]
        assert {"name", "reasoning", "tool_calls", "tool_call_id", "refusal"} <= {k for m in history["data"] for k in m}
        messages = ids(history)
        assert ids(api.call("GET", f"{PREFIX}/{full['id']}/messages", 200, params={"order": "desc"})) == messages[::-1]
        page = api.call("GET", f"{PREFIX}/{full['id']}/messages", 200, params={"limit": 2, "page": 1})
        assert ids(page) == messages[2:4]
        assert page["has_more"] is True
        after = api.call("GET", f"{PREFIX}/{full['id']}/messages", 200, params={"limit": 2, "after": messages[0]})
        assert ids(after) == messages[1:3]
        before = api.call("GET", f"{PREFIX}/{full['id']}/messages", 200, params={"limit": 2, "before": messages[3]})
        assert ids(before) == messages[1:3]
        session = api.call("GET", f"{PREFIX}/{full['id']}", 200)
        assert (session["message_count"], session["request_count"]) == (6, 3)
        assert session["usage"]["total_tokens"] > 0

        fork = api.call(
            "POST", f"{PREFIX}/{full['id']}/fork", 201, json={"up_to_message_id": messages[1], "title": "B"}
        )
        assert (fork["message_count"], fork["title"], fork["status"]) == (2, "B", "active")
        assert api.call("POST", f"{PREFIX}/{full['id']}/fork", 201)["message_count"] == 6  # no body: all of it

        assert api.call("DELETE", f"{PREFIX}/{full['id']}/messages", 200)["message_count"] == 0
        assert api.call("POST", f"{PREFIX}/{bare['id']}/end", 200)["status"] == "ended"
        assert api.call("POST", f"{PREFIX}/{empty['id']}/cancel", 200)["status"] == "ended"
        assert set(ids(api.call("GET", PREFIX, 200, params={"status": "ended"}))) == {bare["id"], empty["id"]}
        deleted = api.call("DELETE", f"{PREFIX}/{fork['id']}", 200)
        assert deleted == {"id": fork["id"], "object": "session.deleted", "deleted": True}
        api.call("GET", f"{PREFIX}/{fork['id']}", 404)

    succeeded = {(method, template) for method, template, status in api.seen if status < 300}
    assert succeeded == OPERATIONS


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (PREFIX, {"titel": "typo"}),
        (PREFIX, {"title": 7}),
        (PREFIX, {"title": "t" * 257}),
        (PREFIX, {"metadata": {f"k{i}": "v" for i in range(17)}}),
        (PREFIX, {"metadata": {"k" * 65: "v"}}),
        (PREFIX, {"metadata": {"k": "v" * 513}}),
        (PREFIX, {"metadata": {"k": 1}}),
        (PREFIX, {"metadata": ["k", "v"]}),
        (PREFIX, {"expires_after": {"anchor": "updated_at", "seconds": 60}}),
        (PREFIX, {"expires_after": {"anchor": "created_at", "seconds": 0}}),
        (PREFIX, {"expires_after": {"anchor": "created_at", "seconds": 31_536_001}}),
        (PREFIX, {"expires_after": {"anchor": "created_at", "seconds": None}}),
        (PREFIX, {"expires_after": {"anchor": "created_at"}}),
        (PREFIX, {"rate_limits": {"max_requests_per_1_minute": 0}}),
        (PREFIX, {"rate_limits": {"max_requests_per_minute": 5}}),
        (PREFIX, {"max_requests": 0}),
        (PREFIX, {"max_requests": 1.5}),
        (PREFIX, {"max_requests": True}),
        (PREFIX, {"client_secret": {"expires_after": 604_801}}),
        (PREFIX, {"client_secret": {"expires_after": None}}),
        (PREFIX, {"client_secret": {"expires_after": {"anchor": "last_active_at", "seconds": 60}}}),
        (PREFIX, {"client_secret": {"expires_after": {"anchor": "created_at"}}}),
        (PREFIX, {"client_secret": {"expires_after": 60, "scope": "all"}}),
        ("{id}", {"status": "ended"}),
        ("{id}", {"metadata": {"k": None}}),
        ("{id}/fork", {"up_to": "msg_1"}),
        ("{id}/fork", {"up_to_message_id": 3}),
    ],
    ids=lambda value: json.dumps(value)[:60],
)
def test_bodies_the_document_refuses_are_400s(
    stack: Stack, checker: OpenAPIChecker, path: str, body: dict[str, Any]
) -> None:
    with Api(stack, checker) as api:
        template = PREFIX
        if path != PREFIX:
            session_id = api.call("POST", PREFIX, 201)["id"]
            path, template = f"{PREFIX}/{path.format(id=session_id)}", f"{SESSION}{path.removeprefix('{id}')}"
        assert checker.request_body_errors("POST", template, body), "the document accepts it"
        error = api.call("POST", path, 400, json=body)
    assert error["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        {"title": None},
        {"metadata": None},
        {"metadata": {}},
        {"expires_after": None},
        {"rate_limits": None},
        {"rate_limits": {}},
        {"rate_limits": {"max_requests_per_1_minute": None}},
        {"max_requests": None},
        {"client_secret": None},
        {"client_secret": {}},
        {"client_secret": {"expires_after": {"seconds": 60}}},
        {"expires_after": {"anchor": "last_active_at", "seconds": 31_536_000}},
        {"client_secret": {"expires_after": 604_800}},
    ],
    ids=json.dumps,
)
def test_the_document_and_the_proxy_agree_on_edge_bodies(
    stack: Stack, checker: OpenAPIChecker, body: dict[str, Any]
) -> None:
    documented = not checker.request_body_errors("POST", PREFIX, body)
    with Api(stack, checker) as api:
        api.call("POST", PREFIX, 201 if documented else 400, json=body)


@pytest.mark.parametrize(
    ("method", "path", "options"),
    [
        ("POST", PREFIX, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("POST", PREFIX, {"json": ["a list"]}),
        ("GET", PREFIX, {"params": {"limit": 0}}),
        ("GET", PREFIX, {"params": {"limit": 101}}),
        ("GET", PREFIX, {"params": {"order": "sideways"}}),
        ("GET", PREFIX, {"params": {"status": "gone"}}),
        ("GET", PREFIX, {"params": {"after": "sess_nowhere"}}),
        ("GET", "{id}/messages", {"params": {"page": -1}}),
        ("GET", "{id}/messages", {"params": {"limit": "ten"}}),
        ("GET", "{id}/messages", {"params": {"after": "msg_nowhere"}}),
        ("POST", "{id}", {"content": b"[", "headers": {"content-type": "application/json"}}),
        ("POST", "{id}/fork", {"json": {"up_to_message_id": "msg_nowhere"}}),
    ],
)
def test_bad_json_and_bad_parameters_are_documented_400s(
    stack: Stack, checker: OpenAPIChecker, method: str, path: str, options: dict[str, Any]
) -> None:
    with Api(stack, checker) as api:
        if path != PREFIX:
            path = f"{PREFIX}/{path.format(id=api.call('POST', PREFIX, 201)['id'])}"
        api.call(method, path, 400, **options)


def test_oversized_bodies_are_413s(stack: Stack, checker: OpenAPIChecker) -> None:
    huge = {"title": "x", "metadata": {"k": "v" * (2 << 20)}}
    with Api(stack, checker) as api:
        api.call("POST", PREFIX, 413, json=huge)
        session_id = api.call("POST", PREFIX, 201)["id"]
        api.call("POST", f"{PREFIX}/{session_id}", 413, json=huge)
        api.call("POST", f"{PREFIX}/{session_id}/fork", 413, json=huge)


def test_unknown_and_foreign_sessions_are_404s_everywhere(stack: Stack, checker: OpenAPIChecker) -> None:
    with Api(stack, checker) as owner:
        theirs = owner.call("POST", PREFIX, 201)["id"]
    with Api(stack, checker) as api:
        for session_id in (theirs, "never-made", "sess_" + "0" * 32):
            for method, suffix in [
                ("GET", ""),
                ("POST", ""),
                ("DELETE", ""),
                ("GET", "/messages"),
                ("DELETE", "/messages"),
                ("POST", "/end"),
                ("POST", "/cancel"),
                ("POST", "/fork"),
            ]:
                api.call(method, f"{PREFIX}/{session_id}{suffix}", 404)
    assert {template for _, template, _ in api.seen} == {t for m, t in OPERATIONS if "{" in t}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "{prefix}/{id}"),
        ("PATCH", "{prefix}/{id}"),
        ("PUT", "{prefix}"),
        ("DELETE", "{prefix}"),
        ("POST", "{prefix}/{id}/messages"),
        ("GET", "{prefix}/{id}/end"),
        ("DELETE", "{prefix}/{id}/cancel"),
        ("GET", "{prefix}/{id}/fork"),
        ("POST", "{prefix}/openapi.json"),
    ],
)
def test_undocumented_methods_are_405s(stack: Stack, checker: OpenAPIChecker, method: str, path: str) -> None:
    with Api(stack, checker) as api:
        api.call(method, path.format(prefix=PREFIX, id=api.call("POST", PREFIX, 201)["id"]), 405)


def test_ended_sessions_answer_409_to_chat_and_clear(stack: Stack, checker: OpenAPIChecker) -> None:
    with Api(stack, checker) as api:
        session_id = api.call("POST", PREFIX, 201)["id"]
        api.chat(session_id, 200)
        api.call("POST", f"{PREFIX}/{session_id}/end", 200)
        forwarded = stack.upstream.chat_count
        api.chat(session_id, 409)
        api.call("DELETE", f"{PREFIX}/{session_id}/messages", 409)
        assert api.call("GET", f"{PREFIX}/{session_id}", 200)["message_count"] == 2
    assert stack.upstream.chat_count == forwarded


@pytest.mark.parametrize("limits", [{"rate_limits": {"max_requests_per_1_minute": 1}}, {"max_requests": 1}])
def test_rate_limited_chat_turns_are_429s_with_retry_after(
    stack: Stack, checker: OpenAPIChecker, limits: dict[str, Any]
) -> None:
    with Api(stack, checker) as api:
        session_id = api.call("POST", PREFIX, 201, json=limits)["id"]
        api.chat(session_id, 200)
        forwarded = stack.upstream.chat_count
        api.chat(session_id, 429)  # the checker holds the Retry-After header to the document
    assert stack.upstream.chat_count == forwarded


def test_client_secrets_reach_their_own_session_only(stack: Stack, checker: OpenAPIChecker) -> None:
    with Api(stack, checker) as owner:
        created = owner.call("POST", PREFIX, 201, json={"client_secret": {"expires_after": 60}})
        other = owner.call("POST", PREFIX, 201)["id"]
    mine = created["id"]
    with Api(stack, checker, api_key=created["client_secret"]["value"]) as browser:
        browser.chat(mine, 200)
        assert stack.upstream.chat_requests[-1].header("authorization") == f"Bearer {UPSTREAM_KEY}"
        assert browser.call("GET", f"{PREFIX}/{mine}", 200)["message_count"] == 2
        browser.call("GET", f"{PREFIX}/{mine}/messages", 200)
        for method, path in [
            ("GET", f"{PREFIX}/{other}"),
            ("GET", f"{PREFIX}/{other}/messages"),
            ("POST", f"{PREFIX}/{mine}"),
            ("DELETE", f"{PREFIX}/{mine}"),
            ("DELETE", f"{PREFIX}/{mine}/messages"),
            ("POST", f"{PREFIX}/{mine}/end"),
            ("POST", f"{PREFIX}/{mine}/fork"),
            ("GET", PREFIX),
            ("POST", PREFIX),
        ]:
            browser.call(method, path, 403)
        browser.chat(other, 403)
    with Api(stack, checker, api_key="spcs_" + "x" * 43) as stranger:
        stranger.call("GET", f"{PREFIX}/{mine}", 401)
        stranger.call("GET", PREFIX, 401)


@pytest.fixture(scope="module")
def bare_stack() -> Iterator[Stack]:
    """No upstream key, a custom prefix, and reasoning replayed as ``reasoning_content``."""
    with running_stack("memory://", sessions_prefix=CUSTOM_PREFIX, replay_reasoning="reasoning_content") as running:
        yield running


def test_the_document_is_served_for_the_prefix_it_is_mounted_at(bare_stack: Stack) -> None:
    with bare_stack.http() as http, httpx2.Client(base_url=bare_stack.url) as anonymous:
        for client in (http, anonymous):
            response = client.get(CUSTOM_PREFIX + OPENAPI_PATH_SUFFIX)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/json")
            assert response.json() == openapi_document(CUSTOM_PREFIX)


def test_a_client_secret_without_an_upstream_key_is_a_documented_400(bare_stack: Stack) -> None:
    checker = OpenAPIChecker(openapi_document(CUSTOM_PREFIX))
    with bare_stack.http() as http:
        response = http.post(CUSTOM_PREFIX, json={"client_secret": {"expires_after": 60}})
    assert response.status_code == 400
    checker.check_response(response)
    assert "upstream_api_key" in response.json()["error"]["message"]


def test_messages_with_replayed_reasoning_match_the_document(bare_stack: Stack) -> None:
    checker = OpenAPIChecker(openapi_document(CUSTOM_PREFIX))
    bare_stack.upstream.push(reply.text("hello", reasoning="thinking"))
    with bare_stack.client(default_headers={"session-id": "reasoned"}) as client:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    with bare_stack.http() as http:
        response = http.get(f"{CUSTOM_PREFIX}/reasoned/messages")
    assert response.status_code == 200
    checker.check_response(response)
    assert response.json()["data"][1]["reasoning"] == "thinking"
