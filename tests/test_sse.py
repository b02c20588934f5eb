from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from pathlib import Path

import pytest

from statefulproxy.dialects.sse import MAX_BUFFER_BYTES, ServerSentEvent, SSEDecodeError, SSEDecoder

STREAMS = Path(__file__).parent / "fixtures" / "streams"
FIXTURES = sorted(path.name for path in STREAMS.glob("*.sse"))
LINE_ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def load(name: str, ending: str) -> bytes:
    return (STREAMS / name).read_bytes().replace(b"\n", LINE_ENDINGS[ending])


def decode(chunks: Iterable[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def expected_events(name: str) -> list[ServerSentEvent]:
    """What a line-by-line reading of the LF fixture says: one event per blank-line-terminated `data:` line."""
    raw = (STREAMS / name).read_bytes()
    complete = raw[: raw.rfind(b"\n\n") + 2]
    return [
        ServerSentEvent(data=line.removeprefix(b"data: ").decode())
        for line in complete.split(b"\n")
        if line.startswith(b"data: ")
    ]


def test_fixtures_present() -> None:
    assert len(FIXTURES) >= 12


@pytest.mark.parametrize("ending", LINE_ENDINGS)
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_decodes_whole(name: str, ending: str) -> None:
    events = decode([load(name, ending)])
    assert events == expected_events(name)
    assert events


@pytest.mark.parametrize("ending", LINE_ENDINGS)
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_every_split(name: str, ending: str) -> None:
    stream = load(name, ending)
    whole = decode([stream])
    for offset in range(len(stream) + 1):
        assert decode([stream[:offset], stream[offset:]]) == whole, offset
    assert decode(stream[i : i + 1] for i in range(len(stream))) == whole
    rng = random.Random(f"{name}-{ending}")
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(2, 12)))
        bounds = [0, *cuts, len(stream)]
        chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
        assert decode(chunks) == whole, cuts


def test_multibyte_split_inside_character() -> None:
    text = "é日🎉"
    stream = f"data: {text}\n\n".encode()
    for offset in range(len(stream) + 1):
        assert decode([stream[:offset], stream[offset:]]) == [ServerSentEvent(data=text)]


def test_invalid_utf8_is_replaced() -> None:
    assert decode([b"data: a\xffb\n\n"]) == [ServerSentEvent(data="a\ufffdb")]


def test_cr_then_lf_in_next_chunk_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Were the LF a second line ending, it would make a blank line and dispatch "a" alone.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [ServerSentEvent(data="a\nb")]
    assert decoder.feed(b"\n") == []


def test_cr_then_cr_is_two_line_endings() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [ServerSentEvent(data="a")]


def test_lf_after_cr_is_skipped_only_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent(data="a")]


def test_mixed_line_endings() -> None:
    assert decode([b"data: a\r\ndata: b\rdata: c\n\r\n", b"data: d\r\r"]) == [
        ServerSentEvent(data="a\nb\nc"),
        ServerSentEvent(data="d"),
    ]


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4])
def test_leading_bom_is_stripped(offset: int) -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    assert decode([stream[:offset], stream[offset:]]) == [ServerSentEvent(data="x")]
    assert decode(stream[i : i + 1] for i in range(len(stream))) == [ServerSentEvent(data="x")]


def test_only_the_first_bom_is_stripped() -> None:
    # A second BOM makes the field name "\ufeffdata", which is not a known field.
    assert decode([b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n"]) == [ServerSentEvent(data="y")]
    assert decode([b"data: x\n\n\xef\xbb\xbfdata: y\n\n"]) == [ServerSentEvent(data="x")]


def test_bom_prefix_that_is_not_a_bom_is_kept() -> None:
    assert decode([b"\xef", b"\xbbdata: x\n\ndata: y\n\n"]) == [ServerSentEvent(data="y")]
    assert decode([b"d", b"ata: x\n\n"]) == [ServerSentEvent(data="x")]


def test_comments_are_ignored_and_do_not_dispatch() -> None:
    assert decode([b": OPENROUTER PROCESSING\n\n:\n\n"]) == []
    assert decode([b"data: a\n: keep-alive\ndata: b\n\n"]) == [ServerSentEvent(data="a\nb")]


def test_multi_line_data_and_space_stripping() -> None:
    assert decode([b"data: a\ndata:\ndata:  b\ndata:c\n\n"]) == [ServerSentEvent(data="a\n\n b\nc")]


def test_field_without_colon_has_empty_value() -> None:
    # Per spec a bare "data" line appends an empty line, so the event is dispatched with data "".
    assert decode([b"data\n\n"]) == [ServerSentEvent(data="")]
    assert decode([b"data\ndata\n\n"]) == [ServerSentEvent(data="\n")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode([b"event: ping\n\ndata: x\n\n"]) == [ServerSentEvent(event="message", data="x")]
    assert decode([b"id: 1\nretry: 5\n\n"]) == []


def test_event_field_applies_to_one_event() -> None:
    assert decode([b"event: error\ndata: boom\n\ndata: next\n\n"]) == [
        ServerSentEvent(event="error", data="boom"),
        ServerSentEvent(event="message", data="next"),
    ]
    assert decode([b"event:\ndata: x\n\n"]) == [ServerSentEvent(event="message", data="x")]


def test_id_persists_across_events() -> None:
    assert decode([b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: x\x00y\ndata: d\n\n"]) == [
        ServerSentEvent(data="a", id="7"),
        ServerSentEvent(data="b", id="7"),
        ServerSentEvent(data="c", id=""),
        ServerSentEvent(data="d", id=""),  # an id containing NUL is ignored
    ]


def test_retry_field() -> None:
    assert decode([b"retry: 3000\ndata: a\n\ndata: b\n\n"]) == [
        ServerSentEvent(data="a", retry=3000),
        ServerSentEvent(data="b"),
    ]
    for bad in (b"1e3", b" 5", b"-1", b"", b"\xd9\xa3", b"1" * 30):  # \xd9\xa3 is an Arabic-Indic digit
        assert decode([b"retry: " + bad + b"\ndata: a\n\n"]) == [ServerSentEvent(data="a")], bad


def test_unknown_fields_are_ignored() -> None:
    assert decode([b"foo: bar\nDATA: no\ndata: yes\n\n"]) == [ServerSentEvent(data="yes")]


def test_flush_discards_unterminated_event() -> None:
    for tail in (b"data: x", b"data: x\n", b"data: x\r\n"):
        decoder = SSEDecoder()
        assert decoder.feed(b"data: done\n\n" + tail) == [ServerSentEvent(data="done")]
        assert decoder.flush() == []


def test_several_events_in_one_chunk() -> None:
    stream = b"".join(b"data: %d\n\n" % i for i in range(100))
    assert decode([stream]) == [ServerSentEvent(data=str(i)) for i in range(100)]


def test_empty_chunks() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == [ServerSentEvent(data="x")]


def test_default_cap() -> None:
    assert MAX_BUFFER_BYTES == 16 * 1024 * 1024
    assert issubclass(SSEDecodeError, ValueError)


def test_partial_line_over_cap_raises() -> None:
    decoder = SSEDecoder(max_buffer_bytes=16)
    assert decoder.feed(b"data: 0123456789") == []  # exactly 16 bytes held
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"x")


def test_partial_line_over_cap_raises_in_one_chunk() -> None:
    decoder = SSEDecoder(max_buffer_bytes=16)
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"data: a\n\ndata: 0123456789abcdef")


def test_long_comment_line_arriving_whole_is_not_held() -> None:
    decoder = SSEDecoder(max_buffer_bytes=16)
    assert decoder.feed(b": " + b"x" * 100 + b"\ndata: ok\n\n") == [ServerSentEvent(data="ok")]


def test_event_data_over_cap_raises_even_when_whole() -> None:
    decoder = SSEDecoder(max_buffer_bytes=16)
    assert decoder.feed(b"data: 0123456789\n\n") == [ServerSentEvent(data="0123456789")]
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"data: " + b"x" * 100 + b"\n\n")


def test_unbounded_event_data_raises() -> None:
    decoder = SSEDecoder(max_buffer_bytes=64)
    for _ in range(4):
        assert decoder.feed(b"data: 0123456789\n") == []  # 4 x 16 bytes: at the cap
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"data: 0123456789\n")


def test_hostile_stream_at_default_cap() -> None:
    decoder = SSEDecoder()
    piece = b"x" * (1024 * 1024)
    for _ in range(16):
        assert decoder.feed(piece) == []
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"x")
