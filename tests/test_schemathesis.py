"""The management API under schemathesis, in-process: generated requests (valid and invalid) for every
operation of the OpenAPI document it serves, checked against that document.

The app is SessionMiddleware (memory store) around a tiny chat app, reached through schemathesis' ASGI
transport. About half of the generated session ids are swapped for a session that exists, with history,
so the operations are exercised on real sessions as well as on unknown ids.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
import schemathesis
from jsonschema import Draft202012Validator
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.python import asgi
from schemathesis.specs.openapi.schemas import OpenApiSchema

from harness.openapi_check import OpenAPIChecker
from statefulproxy import SessionMiddleware
from statefulproxy.asgi.openapi import OPENAPI_PATH_SUFFIX, openapi_document
from statefulproxy.types import Receive, Scope, Send

PREFIX = "/v1/sessions"
API_KEY = "sk-schemathesis"
HEADERS = {"authorization": f"Bearer {API_KEY}"}
EXAMPLES_PER_OPERATION = 30
# What a schema-valid request may still be refused for: naming a session, message or cursor that does
# not exist is the caller's mistake, not a malformed request (README: `after=no-such-session` is a 400).
REFERENCE_PARAMS = {"after", "before", "up_to_message_id"}


class ChatApp:
    """The app behind the middleware: answers every chat request with one short completion."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": f"{message['type']}.complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        while (await receive()).get("more_body"):
            pass
        reply = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        body = json.dumps(reply).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class SessionMaker:
    """Fresh sessions with history, made through the app the way a client makes them."""

    def __init__(self, app: SessionMiddleware) -> None:
        self.app = app
        self.numbers = itertools.count()
        self.alternate = itertools.cycle((True, False))

    def new(self) -> tuple[str, list[str]]:
        """A new session id and its message ids (system, user, assistant)."""
        session_id = f"known-{next(self.numbers)}"
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
        with asgi.get_client(self.app) as client:
            turn = client.post(
                "/v1/chat/completions",
                headers={**HEADERS, "session-id": session_id},
                json={"model": "m", "messages": messages},
            )
            assert turn.status_code == 200, turn.text
            history = client.get(f"{PREFIX}/{session_id}/messages", headers=HEADERS)
            assert history.status_code == 200, history.text
        return session_id, [message["id"] for message in history.json()["data"]]


@pytest.fixture(scope="module")
def management_app() -> Iterator[SessionMiddleware]:
    yield SessionMiddleware(ChatApp(), store="memory://", upstream_api_key="sk-upstream")
    asgi.shutdown_lifespans()  # the lifespan schemathesis started for the app: closes its store


@pytest.fixture(scope="module")
def sessions(management_app: SessionMiddleware) -> SessionMaker:
    return SessionMaker(management_app)


@pytest.fixture(scope="module")
def api_schema(management_app: SessionMiddleware) -> OpenApiSchema:
    # the document as the app serves it, not as the module builds it
    loaded = schemathesis.openapi.from_asgi(PREFIX + OPENAPI_PATH_SUFFIX, management_app)
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=EXAMPLES_PER_OPERATION,
        deterministic=True,  # the same cases every run: a failure here is never a fluke of the draw
    )
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


def _positive(case: Case, location: ParameterLocation) -> bool:
    meta = case.meta
    info = None if meta is None else meta.components.get(location)
    return info is None or info.mode == GenerationMode.POSITIVE


def use_a_real_session(case: Case, sessions: SessionMaker) -> None:
    """Point about half of the cases with a valid session id at a session that exists, with history."""
    session_id = (case.path_parameters or {}).get("session_id")
    if not isinstance(session_id, str) or not _positive(case, ParameterLocation.PATH) or not next(sessions.alternate):
        return
    real_id, message_ids = sessions.new()
    assert case.path_parameters is not None
    case.path_parameters["session_id"] = real_id
    body = case.body
    up_to = body.get("up_to_message_id") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(up_to, str) and _positive(case, ParameterLocation.BODY):
        body["up_to_message_id"] = message_ids[len(up_to) % len(message_ids)]


@pytest.mark.slow
@schema.parametrize()
def test_no_server_errors_and_every_response_matches_the_document(case: Case, sessions: SessionMaker) -> None:
    use_a_real_session(case, sessions)
    case.call_and_validate(
        headers=HEADERS,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )


def check_valid_input_accepted(response: Response, case: Case) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return
    if response.status_code in (404, 409):  # an unknown id, a read-only session: valid requests all the same
        return
    error = response.json().get("error", {})
    if response.status_code == 400 and error.get("param") in REFERENCE_PARAMS and error["message"].startswith("No "):
        return
    body = case.body if isinstance(case.body, (dict, list, str)) else None
    raise AssertionError(
        f"{case.operation.label}: a request the document calls valid got {response.status_code} {error}\n"
        f"  path {case.path_parameters} query {case.query} body {body!r}"
    )


@pytest.mark.slow
@schema.parametrize()
def test_valid_input_is_accepted_and_invalid_input_refused(case: Case, sessions: SessionMaker) -> None:
    use_a_real_session(case, sessions)
    response = case.call_and_validate(headers=HEADERS, checks=[negative_data_rejection])
    check_valid_input_accepted(response, case)


# Inputs on which the document and the implementation disagreed in longer random runs; each side's verdict
# is computed, so the test holds whichever side is changed to agree with the other.
EDGE_INPUTS = [
    pytest.param("POST", PREFIX, {}, {"max_requests": 691.0}, id="integral float max_requests"),
    pytest.param(
        "POST", PREFIX, {}, {"expires_after": {"anchor": "created_at", "seconds": 3000.0}}, id="integral float seconds"
    ),
    pytest.param(
        "POST", PREFIX, {}, {"rate_limits": {"max_requests_per_1_minute": 5.0}}, id="integral float rate limit"
    ),
    pytest.param("POST", PREFIX, {}, {"client_secret": {"expires_after": 10.0}}, id="integral float secret expiry"),
    pytest.param("POST", PREFIX, {}, {"max_requests": 18446744073709551615}, id="64-bit max_requests"),
    pytest.param("GET", PREFIX, {"after": ";"}, None, id="after not an id"),
    pytest.param("GET", PREFIX, {"before": "a b"}, None, id="before not an id"),
    pytest.param("GET", PREFIX, {"order": ""}, None, id="blank order"),
    pytest.param("GET", PREFIX, {"status": ""}, None, id="blank status"),
    pytest.param("GET", PREFIX, {"limit": ""}, None, id="blank limit"),
    pytest.param("GET", PREFIX + "/{session_id}/messages", {"page": "2147483649"}, None, id="page past 2**31"),
    pytest.param("GET", PREFIX + "/{session_id}/messages", {"page": ""}, None, id="blank page"),
    pytest.param("GET", PREFIX + "/{session_id}/messages", {"order": ""}, None, id="blank messages order"),
]


def document_accepts(checker: OpenAPIChecker, method: str, template: str, query: dict[str, str], body: object) -> bool:
    operation = checker.operation(method, template)
    assert operation is not None
    for parameter in operation.get("parameters", []):
        parameter = checker.resolve(parameter)
        if parameter["in"] != "query" or parameter["name"] not in query:
            continue
        raw = query[parameter["name"]]
        schema = parameter["schema"]
        value: object = int(raw) if schema.get("type") == "integer" and raw.isdigit() else raw
        if list(Draft202012Validator(schema).iter_errors(value)):
            return False
    return body is None or checker.request_body_errors(method, template, body) == []


@pytest.mark.parametrize(("method", "template", "query", "body"), EDGE_INPUTS)
def test_the_document_and_the_implementation_agree_on_edge_inputs(
    management_app: SessionMiddleware,
    sessions: SessionMaker,
    method: str,
    template: str,
    query: dict[str, str],
    body: object,
) -> None:
    checker = OpenAPIChecker(openapi_document(PREFIX))
    valid = document_accepts(checker, method, template, query, body)
    path = template.replace("{session_id}", sessions.new()[0])
    options: dict[str, object] = {"params": query} if body is None else {"params": query, "json": body}
    with asgi.get_client(management_app) as client:
        response = client.request(method, path, headers=HEADERS, **options)
    assert response.status_code < 500
    accepted = response.status_code < 400
    assert accepted == valid, (
        f"the document calls it {'valid' if valid else 'invalid'}, the implementation answers "
        f"{response.status_code} {response.text[:300]}"
    )


def test_an_undeclared_method_is_a_405_that_names_the_allowed_ones(
    management_app: SessionMiddleware, sessions: SessionMaker
) -> None:
    # RFC 9110 section 15.5.6: a 405 carries `Allow` (schemathesis' unsupported_method check, made exhaustive)
    document = openapi_document(PREFIX)
    checker = OpenAPIChecker(document)
    session_id, _ = sessions.new()
    problems = []
    with asgi.get_client(management_app) as client:
        for template, item in document["paths"].items():
            declared = {method.upper() for method in item if method in ("get", "post", "delete", "put", "patch")}
            path = template.replace("{session_id}", session_id)
            for method in sorted({"GET", "POST", "DELETE", "PUT", "PATCH"} - declared):
                response = client.request(method, path, headers=HEADERS)
                checker.check(method, template, response.status_code, response.json(), response.headers)
                allowed = {value.strip() for value in response.headers.get("allow", "").split(",") if value.strip()}
                if allowed != declared:
                    problems.append(f"{method} {path}: Allow {response.headers.get('allow')!r}, not {sorted(declared)}")
    assert problems == []


def test_the_sessions_cases_are_pointed_at_exist_for_the_test_credential_only(
    sessions: SessionMaker, management_app: SessionMiddleware
) -> None:
    # the generated cases are worth something on real sessions only if those can be found, and forked
    session_id, message_ids = sessions.new()
    assert len(message_ids) == 3
    with asgi.get_client(management_app) as client:
        fork = client.post(f"{PREFIX}/{session_id}/fork", headers=HEADERS, json={"up_to_message_id": message_ids[1]})
        assert fork.status_code == 201, fork.text
        assert fork.json()["message_count"] == 2
        other = client.get(f"{PREFIX}/{session_id}", headers={"authorization": "Bearer another-key"})
        assert other.status_code == 404
