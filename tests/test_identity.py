from __future__ import annotations

import re
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statefulproxy.errors import ClientError
from statefulproxy.sessions.identity import (
    body_session_id,
    credential,
    header_session_id,
    mint_session_id,
    owner_of,
    resolve_session_id,
    validate_session_id,
)

ALPHABET = string.ascii_letters + string.digits + "._:-"
HEADER_NAMES = frozenset({b"session-id", b"x-session-id", b"sessionid", b"session_id"})
SECRET = b"s" * 32


def client_error(exc_info: pytest.ExceptionInfo[ClientError], code: str) -> ClientError:
    error = exc_info.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.code == code
    return error


# --- validate_session_id ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "A" * 128, "sess_0123", "user:42.chat-7_x", "..", "-", ":"])
def test_valid_ids_accepted(value: str) -> None:
    assert validate_session_id(value, "session_id") == value


@pytest.mark.parametrize(
    "value",
    ["", "a" * 129, "has space", " lead", "trail ", "a/b", "café", "日本", "a\nb", "a\x00", "tab\t", "a+b", "é"],
)
def test_invalid_ids_rejected(value: str) -> None:
    with pytest.raises(ClientError) as info:
        validate_session_id(value, "metadata.session_id")
    error = client_error(info, "invalid_session_id")
    assert error.param == "metadata.session_id"
    assert "metadata.session_id" in error.message


@pytest.mark.parametrize("value", [None, 5, 1.5, True, ["abc"], {"id": "abc"}, b"abc"])
def test_non_string_ids_rejected(value: object) -> None:
    with pytest.raises(ClientError) as info:
        validate_session_id(value, "session_id")
    client_error(info, "invalid_session_id")


@given(st.text(alphabet=ALPHABET, min_size=1, max_size=128))
def test_any_id_of_the_alphabet_is_accepted(value: str) -> None:
    assert validate_session_id(value, "session_id") == value


@given(
    st.text(alphabet=ALPHABET, max_size=60),
    st.characters(blacklist_characters=ALPHABET),
    st.text(alphabet=ALPHABET, max_size=60),
)
def test_any_other_character_is_rejected(before: str, bad: str, after: str) -> None:
    with pytest.raises(ClientError) as info:
        validate_session_id(before + bad + after, "session_id")
    client_error(info, "invalid_session_id")


@given(st.text(alphabet=ALPHABET, min_size=129, max_size=300))
def test_longer_than_128_is_rejected(value: str) -> None:
    with pytest.raises(ClientError):
        validate_session_id(value, "session_id")


# --- body sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"metadata": {"session_id": "m1"}}, ("metadata.session_id", "m1")),
        ({"session_id": "s1"}, ("session_id", "s1")),
        ({"sessionId": "c1"}, ("sessionId", "c1")),
        ({"metadata": {"session_id": "x"}, "session_id": "x", "sessionId": "x"}, ("metadata.session_id", "x")),
        ({"session_id": "x", "sessionId": "x"}, ("session_id", "x")),
        ({"metadata": {"user": "u"}, "messages": []}, None),
        ({"metadata": None}, None),
        ({"metadata": "session_id"}, None),
        ({}, None),
    ],
)
def test_body_session_id(body: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert body_session_id(body) == expected


@pytest.mark.parametrize(
    ("body", "second"),
    [
        ({"metadata": {"session_id": "a"}, "session_id": "b"}, "session_id"),
        ({"metadata": {"session_id": "a"}, "sessionId": "b"}, "sessionId"),
        ({"session_id": "a", "sessionId": "b"}, "sessionId"),
        ({"metadata": {"session_id": "a"}, "session_id": "a", "sessionId": "b"}, "sessionId"),
    ],
)
def test_body_sources_that_disagree_are_a_400(body: dict[str, Any], second: str) -> None:
    with pytest.raises(ClientError) as info:
        body_session_id(body)
    error = client_error(info, "conflicting_session_id")
    assert error.param == second


@pytest.mark.parametrize(
    "body",
    [{"metadata": {"session_id": ""}}, {"session_id": 12}, {"sessionId": None}, {"session_id": "a b"}],
)
def test_invalid_body_id_is_a_400(body: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as info:
        body_session_id(body)
    client_error(info, "invalid_session_id")


# --- header sources -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"session-id", b"x-session-id", b"sessionid", b"session_id"])
@pytest.mark.parametrize("case", [bytes.lower, bytes.upper, bytes.title, lambda n: n.replace(b"id", b"Id")])
def test_header_names_any_case(name: bytes, case: Any) -> None:
    headers = [(b"content-type", b"application/json"), (case(name), b"abc-1")]
    assert header_session_id(headers, HEADER_NAMES) == (f"header {name.decode()}", "abc-1")


def test_no_session_header() -> None:
    assert header_session_id([(b"authorization", b"Bearer x"), (b"session", b"nope")], HEADER_NAMES) is None
    assert header_session_id([], HEADER_NAMES) is None


def test_configured_header_names_only() -> None:
    assert header_session_id([(b"x-session-id", b"abc")], frozenset({b"x-conversation"})) is None
    assert header_session_id([(b"X-Conversation", b"abc")], frozenset({b"x-conversation"})) == (
        "header x-conversation",
        "abc",
    )


def test_headers_that_agree_are_fine() -> None:
    headers = [(b"Session-Id", b"abc"), (b"x-session-id", b"abc"), (b"SESSIONID", b"abc")]
    assert header_session_id(headers, HEADER_NAMES) == ("header session-id", "abc")


def test_headers_that_disagree_are_a_400() -> None:
    with pytest.raises(ClientError) as info:
        header_session_id([(b"session-id", b"abc"), (b"x-session-id", b"abd")], HEADER_NAMES)
    client_error(info, "conflicting_session_id")


def test_repeated_header_that_disagrees_is_a_400() -> None:
    with pytest.raises(ClientError) as info:
        header_session_id([(b"x-session-id", b"abc"), (b"X-Session-Id", b"xyz")], HEADER_NAMES)
    client_error(info, "conflicting_session_id")


@pytest.mark.parametrize("value", [b"", b"a b", b"caf\xc3\xa9", b"a/b", b"a" * 129])
def test_invalid_header_id_is_a_400(value: bytes) -> None:
    with pytest.raises(ClientError) as info:
        header_session_id([(b"x-session-id", value)], HEADER_NAMES)
    error = client_error(info, "invalid_session_id")
    assert error.param == "header x-session-id"


# --- resolve_session_id: body before headers, disagreement is a 400 -----------------------------


def resolve(body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> str | None:
    return resolve_session_id(body_session_id(body), header_session_id(headers, HEADER_NAMES))


def test_resolve_neither() -> None:
    assert resolve({"messages": []}, [(b"accept", b"*/*")]) is None


def test_resolve_body_only_and_header_only() -> None:
    assert resolve({"metadata": {"session_id": "from-body"}}, []) == "from-body"
    assert resolve({}, [(b"Session-ID", b"from-header")]) == "from-header"


def test_resolve_body_and_header_agreeing() -> None:
    assert resolve({"sessionId": "same"}, [(b"x-session-id", b"same")]) == "same"


@pytest.mark.parametrize("body", [{"metadata": {"session_id": "a"}}, {"session_id": "a"}, {"sessionId": "a"}])
def test_resolve_body_and_header_disagreeing(body: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as info:
        resolve(body, [(b"x-session-id", b"b")])
    error = client_error(info, "conflicting_session_id")
    assert error.param == "header x-session-id"


# --- credential ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_bearer_any_case(scheme: bytes) -> None:
    assert credential([(b"Authorization", scheme + b" sk-abc")]) == b"sk-abc"


def test_bearer_token_whitespace_trimmed() -> None:
    assert credential([(b"authorization", b"Bearer   sk-abc  ")]) == b"sk-abc"


def test_x_api_key_and_api_key() -> None:
    assert credential([(b"X-Api-Key", b"anthropic-key")]) == b"anthropic-key"
    assert credential([(b"api-key", b"azure-key")]) == b"azure-key"


def test_precedence_bearer_then_x_api_key_then_api_key() -> None:
    everything = [(b"api-key", b"azure"), (b"x-api-key", b"anthropic"), (b"authorization", b"Bearer openai")]
    assert credential(everything) == b"openai"
    assert credential(everything[:2]) == b"anthropic"
    assert credential(list(reversed(everything[:2]))) == b"anthropic"


@pytest.mark.parametrize("authorization", [b"Basic dXNlcjpwYXNz", b"sk-raw", b"Token abc", b"Bearer", b"Bearer   "])
def test_any_other_authorization_is_a_credential_taken_whole(authorization: bytes) -> None:
    # issue 10, defect 1: these fell into the shared anonymous owner, readable by anyone
    assert credential([(b"authorization", authorization)]) == authorization.strip()
    # a key header is more specific than an authorization the proxy cannot read
    assert credential([(b"authorization", authorization), (b"x-api-key", b"k")]) == b"k"


@pytest.mark.parametrize("separator", [b"\t", b" \t ", b"  "])
def test_bearer_with_any_whitespace(separator: bytes) -> None:
    assert credential([(b"authorization", b"Bearer" + separator + b"sk-abc")]) == b"sk-abc"


def test_gemini_key_header() -> None:
    assert credential([(b"x-goog-api-key", b"AIza-1")]) == b"AIza-1"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"api-key=azure-1", b"azure-1"),
        (b"key=AIza-2", b"AIza-2"),
        (b"alt=sse&key=AIza%2B3", b"AIza+3"),
        (b"key=&api-key=k4", b"k4"),
        (b"api-key=a&key=b", b"a"),
        (b"alt=sse", None),
        (b"key=", None),
    ],
)
def test_query_parameter_keys(query: bytes, expected: bytes | None) -> None:
    assert credential([], query) == expected


def test_headers_before_query_and_query_before_other_authorization() -> None:
    assert credential([(b"x-goog-api-key", b"h")], b"key=q") == b"h"
    assert credential([(b"authorization", b"Basic zzz")], b"key=q") == b"q"


def test_distinct_credentials_are_distinct_owners() -> None:
    forms = [
        credential([(b"authorization", b"Basic dXNlcjpwYXNz")]),
        credential([(b"authorization", b"Basic b3RoZXI6cGFzcw==")]),
        credential([], b"api-key=one"),
        credential([], b"key=two"),
        credential([(b"authorization", b"Bearer\tthree")]),
    ]
    owners = {owner_of(form, SECRET) for form in forms}
    assert len(owners) == len(forms)
    assert owner_of(None, SECRET) not in owners


def test_no_credential() -> None:
    assert credential([]) is None
    assert credential([(b"content-type", b"application/json")]) is None
    assert credential([(b"x-api-key", b""), (b"api-key", b"")]) is None


# --- owner_of -----------------------------------------------------------------------------------


def test_scope_deterministic() -> None:
    assert owner_of(b"sk-one", SECRET) == owner_of(b"sk-one", SECRET)
    assert owner_of(None, SECRET) == owner_of(None, SECRET)


def test_scope_differs_per_key_and_per_secret() -> None:
    keys = [b"sk-one", b"sk-two", b"sk-one ", b"anonymous", b"", b"key:sk-one"]
    scopes = {owner_of(key, SECRET) for key in keys} | {owner_of(None, SECRET)}
    assert len(scopes) == len(keys) + 1  # anonymous differs from every key, including b"anonymous"
    assert owner_of(b"sk-one", SECRET) != owner_of(b"sk-one", b"t" * 32)
    assert owner_of(None, SECRET) != owner_of(None, b"t" * 32)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_scope_distinct_keys_distinct_scopes(first: bytes, second: bytes) -> None:
    assert (owner_of(first, SECRET) == owner_of(second, SECRET)) == (first == second)
    assert owner_of(first, SECRET) != owner_of(None, SECRET)


def test_scope_never_contains_the_credential() -> None:
    for key in [b"sk-proj-AbCdEfGh1234567890", b"abcdef", b"0123456789abcdef"]:
        scope = owner_of(key, SECRET)
        assert re.fullmatch(r"[0-9a-f]{32}", scope)
        assert key.decode() not in scope
        assert SECRET.decode() not in scope


# --- mint_session_id ----------------------------------------------------------------------------


def test_mint_format_and_uniqueness() -> None:
    minted = [mint_session_id() for _ in range(1000)]
    for session_id in minted:
        assert re.fullmatch(r"sess_[0-9a-f]{32}", session_id), session_id
        assert validate_session_id(session_id, "session_id") == session_id
    assert len(set(minted)) == len(minted)


def test_lease_tokens_are_unique_and_a_forked_child_draws_its_own() -> None:
    import os

    from statefulproxy.sessions import leases

    tokens = {leases._new_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first token and leave at once
        os.write(writer, leases._new_token().encode())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 200).decode()
    os.close(reader)
    os.waitpid(pid, 0)
    assert child
    assert child not in tokens
    assert child[:24] != leases._new_token()[:24]  # another process prefix, not just a later number


def test_owner_of_is_cached_and_still_keyed_by_the_secret() -> None:
    from statefulproxy.sessions.identity import owner_of

    first = owner_of(b"sk-cached", b"secret-one")
    assert owner_of(b"sk-cached", b"secret-one") == first
    assert owner_of(b"sk-cached", b"secret-two") != first
    assert owner_of(None, b"secret-one") != first
