"""The management API as one table (issue 13, item 4): each route declared once, with typed models, and
the OpenAPI document, the dispatch and the refusals all made from it. The refusals keep the words the
hand-written validation had (each case below was checked against it), so these pin them."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from statefulproxy.asgi.api_codec import BodyDecoder, QueryDecoder
from statefulproxy.asgi.api_models import MessagesQuery, SessionsQuery, message_object, session_object
from statefulproxy.asgi.api_types import (
    CreateSessionRequest,
    ForkSessionRequest,
    Message,
    Session,
    UpdateSessionRequest,
)
from statefulproxy.asgi.management import ManagementAPI
from statefulproxy.asgi.openapi import openapi_document
from statefulproxy.asgi.routes_table import ROUTES, match
from statefulproxy.errors import ClientError
from statefulproxy.stores.base import ExpiresAfter, SessionLimits, SessionRecord, StoredMessage
from statefulproxy.types import Scope

PREFIX = "/v1/sessions"
CREATE, UPDATE, FORK = (
    BodyDecoder(CreateSessionRequest),
    BodyDecoder(UpdateSessionRequest),
    BodyDecoder(ForkSessionRequest),
)
SESSIONS, MESSAGES = QueryDecoder(SessionsQuery), QueryDecoder(MessagesQuery)


def refusal(decoder: BodyDecoder[Any], body: Any) -> tuple[str, str | None]:
    with pytest.raises(ClientError) as info:
        decoder.decode(body if isinstance(body, bytes) else json.dumps(body).encode())
    assert (info.value.status, info.value.type) == (400, "invalid_request_error")
    return info.value.message, info.value.param


# --- one table -----------------------------------------------------------------------------------


def test_the_document_is_made_from_the_table() -> None:
    document = openapi_document(PREFIX)
    described = {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert set(described) == {(route.method, PREFIX + route.path) for route in ROUTES}
    for route in ROUTES:
        operation = described[route.method, PREFIX + route.path]
        assert (operation["operationId"], operation["summary"]) == (route.operation_id, route.summary)
        fields = [] if route.query is None else [field.encode_name for field in msgspec.structs.fields(route.query)]
        assert [parameter["name"] for parameter in operation.get("parameters", [])] == fields
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        assert body == (None if route.body is None else {"$ref": f"#/components/schemas/{route.body.__name__}"})
        answer = operation["responses"][str(route.status)]["content"]["application/json"]["schema"]
        if isinstance(route.response, type):
            assert answer == {"$ref": f"#/components/schemas/{route.response.__name__}"}
        assert {int(status) for status in operation["responses"]} == {route.status, *route.errors}


def test_the_limits_are_stated_once_and_the_document_shows_them() -> None:
    schemas = openapi_document()["components"]["schemas"]
    metadata = schemas["CreateSessionRequest"]["properties"]["metadata"]["anyOf"][0]
    assert (metadata["maxProperties"], metadata["propertyNames"], metadata["additionalProperties"]["maxLength"]) == (
        16,
        {"maxLength": 64},
        512,
    )
    assert schemas["Session"]["properties"]["metadata"] == metadata  # the same type, answered as accepted
    assert refusal(CREATE, {"metadata": {f"k{i}": "v" for i in range(17)}}) == (
        "'metadata' may hold at most 16 pairs.",
        "metadata",
    )


def test_every_route_has_its_handler() -> None:
    async def owner_for(scope: Scope) -> str:
        return "owner"

    api = ManagementAPI(None, owner_for, PREFIX, None)  # type: ignore[arg-type]
    assert set(api.handlers) == {route.operation_id for route in ROUTES}


@pytest.mark.parametrize(
    ("rest", "path", "session_id"),
    [
        ("", "", None),
        ("/", "", None),
        ("/openapi.json", "/openapi.json", None),
        ("/openapi.json/", "/{session_id}", "openapi.json"),  # the document's path matches exactly
        ("/s1", "/{session_id}", "s1"),
        ("/s1/", "/{session_id}", "s1"),
        ("/s1/messages/", "/{session_id}/messages", "s1"),
        ("/s1/fork", "/{session_id}/fork", "s1"),
    ],
)
def test_paths_fall_under_the_routes_they_always_did(rest: str, path: str, session_id: str | None) -> None:
    found = match(rest)
    assert found is not None
    assert (found[0].path, found[1]) == (path, session_id)


@pytest.mark.parametrize("rest", ["//", "/s1/x", "/s1/messages/x", "/s1//"])
def test_other_paths_fall_under_none(rest: str) -> None:
    assert match(rest) is None


# --- the refusals, in the words the API always used --------------------------------------------

PAIRS = "'metadata' keys must be at most 64 characters, values strings of at most 512."
EXPIRES = '\'expires_after\' must be {"anchor": ..., "seconds": ...}.'
COUNT = "must be an integer from 1 to 2147483647."
SECRET = "'client_secret.expires_after'"
SECRET_SECONDS = f"{SECRET} must be an integer from 1 to 604800."
ANCHORS = f"{SECRET} anchors at created_at."
WORDS = [
    (CREATE, {"titel": "typo"}, "Unrecognized request argument supplied: titel", "titel"),
    (CREATE, {"title": 7}, "'title' must be a string of at most 256 characters.", "title"),
    (CREATE, {"title": "t" * 257}, "'title' must be a string of at most 256 characters.", "title"),
    (CREATE, {"metadata": ["k"]}, "'metadata' must be an object of string values.", "metadata"),
    (CREATE, {"metadata": {"k": 1}}, PAIRS, "metadata"),
    (CREATE, {"metadata": {"k" * 65: "v"}}, PAIRS, "metadata"),
    (UPDATE, {"metadata": {"k": None}}, PAIRS, "metadata"),
    (CREATE, {"max_requests": 0}, f"'max_requests' {COUNT}", "max_requests"),
    (CREATE, {"max_requests": 1.5}, f"'max_requests' {COUNT}", "max_requests"),
    (CREATE, {"max_requests": True}, f"'max_requests' {COUNT}", "max_requests"),
    (CREATE, {"max_requests": 2**64}, f"'max_requests' {COUNT}", "max_requests"),
    (CREATE, {"expires_after": 60}, EXPIRES, "expires_after"),
    (CREATE, {"expires_after": {"anchor": "created_at"}}, EXPIRES, "expires_after"),
    (
        CREATE,
        {"expires_after": {"anchor": "x", "seconds": 5}},
        "'expires_after.anchor' must be created_at or last_active_at.",
        "expires_after",
    ),
    (
        CREATE,
        {"expires_after": {"anchor": "created_at", "seconds": 0}},
        "'expires_after.seconds' must be an integer from 1 to 31536000.",
        "expires_after.seconds",
    ),
    (
        CREATE,
        {"expires_after": {"anchor": "created_at", "seconds": None}},
        "'expires_after.seconds' is required.",
        "expires_after.seconds",
    ),
    (
        CREATE,
        {"rate_limits": {"max_requests_per_minute": 5}},
        "'rate_limits' must be {\"max_requests_per_1_minute\": n}.",
        "rate_limits",
    ),
    (
        CREATE,
        {"rate_limits": {"max_requests_per_1_minute": 0}},
        f"'rate_limits.max_requests_per_1_minute' {COUNT}",
        "rate_limits.max_requests_per_1_minute",
    ),
    (
        UPDATE,
        {"history_window": 3},
        '\'history_window\' must be {"max_messages": n, "max_tokens": n}.',
        "history_window",
    ),
    (
        UPDATE,
        {"history_window": {"max_tokens": -1}},
        "'history_window.max_tokens' must be an integer from 0 to 2147483647.",
        "history_window.max_tokens",
    ),
    (
        CREATE,
        {"client_secret": 60},
        '\'client_secret\' must be {"expires_after": seconds, "dialect", "model", "max_tokens"}.',
        "client_secret",
    ),
    (CREATE, {"client_secret": {"expires_after": 604_801}}, SECRET_SECONDS, "client_secret.expires_after"),
    (CREATE, {"client_secret": {"expires_after": "soon"}}, SECRET_SECONDS, "client_secret.expires_after"),
    (CREATE, {"client_secret": {"expires_after": {"seconds": 0}}}, SECRET_SECONDS, "client_secret.expires_after"),
    (CREATE, {"client_secret": {"expires_after": None}}, f"{SECRET} is required.", "client_secret.expires_after"),
    (
        CREATE,
        {"client_secret": {"expires_after": {"anchor": "created_at"}}},
        f"{SECRET} is required.",
        "client_secret.expires_after",
    ),
    (
        CREATE,
        {"client_secret": {"expires_after": {"anchor": "last_active_at", "seconds": 6}}},
        ANCHORS,
        "client_secret",
    ),
    (CREATE, {"client_secret": {"expires_after": {"seconds": 6, "x": 1}}}, ANCHORS, "client_secret"),
    (
        CREATE,
        {"client_secret": {"dialect": "mistral"}},
        "'client_secret.dialect' must be one of openai, anthropic, ollama, gemini.",
        "client_secret",
    ),
    (CREATE, {"client_secret": {"model": ""}}, "'client_secret.model' must be a non-empty string.", "client_secret"),
    (CREATE, {"client_secret": {"max_tokens": 0}}, f"'client_secret.max_tokens' {COUNT}", "client_secret.max_tokens"),
    (FORK, {"up_to_message_id": 3}, "'up_to_message_id' must be a message id.", "up_to_message_id"),
    (FORK, {"up_to": "msg_1"}, "Unrecognized request argument supplied: up_to", "up_to"),
    (CREATE, b"{not json", "The request body is not valid JSON.", None),
    (CREATE, b'{"title": 1e400}', "The request body is not valid JSON.", None),
    (CREATE, b'{"metadata":' + b"[" * 2000 + b"]" * 2000 + b"}", "The request body is not valid JSON.", None),
    (CREATE, b"[]", "The request body must be a JSON object.", None),
    (CREATE, b"null", "The request body must be a JSON object.", None),
]


@pytest.mark.parametrize(("decoder", "body", "message", "param"), WORDS, ids=lambda value: str(value)[:50])
def test_a_refusal_keeps_its_words(decoder: BodyDecoder[Any], body: Any, message: str, param: str | None) -> None:
    assert refusal(decoder, body) == (message, param)


def test_what_the_api_accepted_it_still_accepts() -> None:
    assert CREATE.decode(b"") == CreateSessionRequest()
    assert CREATE.decode(b'{"max_requests": 5.0}').max_requests == 5  # integral: an integer, to JSON Schema too
    new = CREATE.decode(b'{"expires_after": {"anchor": "last_active_at", "seconds": 60.0}}').new_session()
    assert new.expires_after == ExpiresAfter("last_active_at", 60)
    secret = CREATE.decode(b'{"client_secret": {"expires_after": {"seconds": 90}, "dialect": "gemini"}}')
    assert secret.client_secret is not None
    assert (secret.client_secret.seconds(), secret.client_secret.grant()["dialect"]) == (90, "gemini")
    assert secret.new_session().limits == SessionLimits(max_requests_per_1_minute=20)  # a browser's session: limited
    assert UPDATE.decode(b"{}").window() is not None  # absent: left as it is (UNCHANGED), not removed
    assert UPDATE.decode(b'{"history_window": null}').window() is None
    assert UPDATE.decode(b'{"history_window": {"max_tokens": 9}}').window() == (0, 9)


def test_of_several_faults_the_first_in_the_models_order_is_told() -> None:
    # title comes before max_requests in the model, whatever order the client wrote them in
    expected = ("'title' must be a string of at most 256 characters.", "title")
    assert refusal(CREATE, b'{"max_requests": 0, "title": 7}') == expected
    assert refusal(CREATE, b'{"title": 7, "max_requests": 0}') == expected


def nested_places(model: type[msgspec.Struct], prefix: str = "") -> list[str]:
    """Every field of a request model, dotted, nested models included."""
    places = []
    for field in msgspec.structs.fields(model):
        place = prefix + field.encode_name
        places.append(place)
        kinds = [field.type, *getattr(field.type, "__args__", ())]
        for kind in kinds:
            kind = getattr(kind, "__origin__", kind)  # Annotated
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                places += nested_places(kind, place + ".")
    return places


@pytest.mark.parametrize("decoder", [CREATE, UPDATE, FORK], ids=lambda decoder: decoder.model.__name__)
def test_every_place_of_a_body_is_refused_in_its_own_words(decoder: BodyDecoder[Any]) -> None:
    # msgspec names the place of a fault in its message; each place must be found (no fallback words)
    places = nested_places(decoder.model)
    assert len(places) >= 2
    if decoder is CREATE:
        assert {"expires_after.anchor", "client_secret.expires_after.seconds"} <= set(places)
    for place in places:
        body: Any = [["not", "this"]]
        for part in reversed(place.split(".")):
            body = {part: body}
        message, param = refusal(decoder, body)
        assert message != "The request is invalid.", place
        assert param is not None, place
        assert place.startswith(param) or param in place, (place, param)


# --- query parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "message", "param"),
    [
        ([("limit", "0")], "'limit' must be an integer from 1 to 100.", "limit"),
        ([("limit", "5.0")], "'limit' must be an integer from 1 to 100.", "limit"),
        ([("limit", "+5")], "'limit' must be an integer from 1 to 100.", "limit"),
        ([("limit", "²")], "'limit' must be an integer from 1 to 100.", "limit"),
        ([("limit", "9" * 200)], "'limit' must be an integer from 1 to 100.", "limit"),
        ([("order", "sideways")], "'order' must be 'asc' or 'desc'.", "order"),
        ([("status", "")], "'status' must be one of active, ended, expired.", "status"),
        ([("after", "a b")], "'after' must be a session id.", "after"),
        ([("before", ";")], "'before' must be a session id.", "before"),
        ([("metadata[]", "x")], "'metadata[KEY]=VALUE' filters need a key.", "metadata"),
        ([("q", "x" * 257)], "'q' must be a string of at most 256 characters.", "q"),
    ],
)
def test_a_bad_list_parameter_keeps_its_words(pairs: list[tuple[str, str]], message: str, param: str) -> None:
    with pytest.raises(ClientError) as info:
        SESSIONS.decode(pairs)
    assert (info.value.status, info.value.message, info.value.param) == (400, message, param)


def test_list_parameters_as_they_always_were_read() -> None:
    query = SESSIONS.decode(
        [
            ("limit", "05"),
            ("limit", "7"),
            ("metadata[team]", "a"),
            ("metadata[a]b]", "c"),
            ("metadata", "x"),
            ("x", "1"),
        ]
    )
    assert (query.limit, query.order, query.metadata, query.q) == (7, "desc", {"team": "a", "a]b": "c"}, None)
    messages = MESSAGES.decode([("page", "2"), ("after", "")])
    assert (messages.page, messages.order, messages.after) == (2, "asc", "")  # any message id is looked up
    with pytest.raises(ClientError, match=r"'page' must be an integer from 0 to 2147483648\."):
        MESSAGES.decode([("page", str(2**31 + 1))])


# --- the answers fit their models ---------------------------------------------------------------


def test_the_objects_the_api_answers_fit_the_response_models() -> None:
    record = SessionRecord(
        id="s1",
        status="ended",
        title="t",
        message_count=2,
        created_at=1,
        last_active_at=2,
        expires_at=61,
        metadata={"k": "v"},
        usage={"total_tokens": 3},
        expires_after=ExpiresAfter("created_at", 60),
        limits=SessionLimits(5, 10),
        history_window=(4, 0),
        namespace="/document/d1",
    )
    shown = session_object(record)
    assert msgspec.to_builtins(msgspec.convert(shown, Session)) == shown
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**shown, "extra": 1}, Session)
    reply = StoredMessage(
        b'{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}',
        b'{"id":"msg_1","created_at":5,"reasoning":"hmm"}',
    )
    message = message_object(reply)
    assert msgspec.to_builtins(msgspec.convert(message, Message)) == message
