"""Idempotency-Key parsing and kept values (sans-I/O)."""

from __future__ import annotations

import orjson
import pytest

from statefulproxy.errors import ClientError
from statefulproxy.sessions.idempotency import MAX_KEY_LENGTH, idempotency_key
from statefulproxy.sessions.identity import validate_session_id


def key_of(value: bytes, body: bytes = b"{}") -> str:
    key = idempotency_key([(b"Idempotency-Key", value)], body)
    assert key is not None
    return key.hashed


def test_no_header_no_key() -> None:
    assert idempotency_key([(b"x-other", b"1")], b"{}") is None


def test_the_key_is_hashed_and_trimmed_never_kept_as_sent() -> None:
    assert key_of(b"  abc ") == key_of(b"abc")
    assert key_of(b"abc") != key_of(b"abd")
    assert "abc" not in key_of(b"abc")
    assert len(key_of(b"k" * MAX_KEY_LENGTH)) == 32
    assert key_of(b'"8e03978e-40d5-43e8-bc93-6894a57f9324"')  # the IETF draft's quoted form is a key too


@pytest.mark.parametrize("value", [b"", b"   ", b"k" * (MAX_KEY_LENGTH + 1), b"caf\xc3\xa9", b"a\x00b", b"\x7f"])
def test_bad_keys_are_400(value: bytes) -> None:
    with pytest.raises(ClientError) as caught:
        idempotency_key([(b"idempotency-key", value)], b"{}")
    assert (caught.value.status, caught.value.code) == (400, "invalid_idempotency_key")


def test_a_key_sent_twice_is_400_even_when_equal() -> None:
    with pytest.raises(ClientError):
        idempotency_key([(b"idempotency-key", b"a"), (b"Idempotency-Key", b"a")], b"{}")


def test_a_kept_value_answers_only_the_same_body() -> None:
    message = orjson.dumps({"role": "assistant", "content": "hi\nthere"})
    first = idempotency_key([(b"idempotency-key", b"k")], b'{"a":1}')
    same = idempotency_key([(b"idempotency-key", b"k")], b'{"a":1}')
    other = idempotency_key([(b"idempotency-key", b"k")], b'{"a":2}')
    assert first is not None
    assert same is not None
    assert other is not None
    kept = first.keep(message)
    assert same.reply(kept) == {"role": "assistant", "content": "hi\nthere"}
    with pytest.raises(ClientError) as caught:
        other.reply(kept)
    assert (caught.value.status, caught.value.code) == (422, "idempotency_key_reused")


def test_a_derived_session_id_is_valid_stable_and_per_scope() -> None:
    key = idempotency_key([(b"idempotency-key", b"k")], b"{}")
    assert key is not None
    derived = key.session_id("scope-a")
    assert validate_session_id(derived, "test") == derived
    assert derived == key.session_id("scope-a")
    assert derived != key.session_id("scope-b")
