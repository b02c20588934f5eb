from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import pytest

from statefulproxy.dialects.ndjson import MAX_LINE_BYTES, NDJSONDecoder, NDJSONLineTooLong

STREAM = b'{"a":1}\n\n{"b":"\xc3\xa9\xe6\x97\xa5\xf0\x9f\x8e\x89"}\r\n  \r\n{"c":[1,2]}\n{"partial"'
LINES = [b'{"a":1}', b'{"b":"\xc3\xa9\xe6\x97\xa5\xf0\x9f\x8e\x89"}', b'{"c":[1,2]}']


def split_lines(chunks: Iterable[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> list[bytes]:
    decoder = NDJSONDecoder(max_line_bytes)
    return [line for chunk in chunks for line in decoder.feed(chunk)]


def test_whole_stream() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(STREAM) == LINES
    assert decoder.partial == b'{"partial"'


def test_every_split_gives_the_same_lines() -> None:
    for offset in range(len(STREAM) + 1):
        assert split_lines([STREAM[:offset], STREAM[offset:]]) == LINES, offset
    assert split_lines(STREAM[i : i + 1] for i in range(len(STREAM))) == LINES
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(2, 10)))
        bounds = [0, *cuts, len(STREAM)]
        assert split_lines(STREAM[a:b] for a, b in itertools.pairwise(bounds)) == LINES, cuts


def test_multibyte_character_split_inside_is_whole_in_its_line() -> None:
    text = "é日🎉"
    stream = f'"{text}"\n'.encode()
    for offset in range(len(stream) + 1):
        lines = split_lines([stream[:offset], stream[offset:]])
        assert [line.decode() for line in lines] == [f'"{text}"']


def test_a_line_is_returned_only_once_its_line_feed_arrives() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"x":1}') == []
    assert decoder.feed(b"\r") == []
    assert decoder.partial == b'{"x":1}\r'
    assert decoder.feed(b"\n") == [b'{"x":1}']
    assert decoder.partial == b""


def test_blank_and_whitespace_lines_are_skipped() -> None:
    assert split_lines([b"\n\r\n \t\n\n"]) == []


def test_bare_cr_does_not_end_a_line() -> None:
    # NDJSON lines end in LF (optionally CRLF); a lone CR stays inside the line.
    assert split_lines([b"a\rb\n"]) == [b"a\rb"]


def test_partial_line_over_the_cap_raises_a_value_error() -> None:
    decoder = NDJSONDecoder(max_line_bytes=10)
    decoder.feed(b"0123456789")
    with pytest.raises(NDJSONLineTooLong):
        decoder.feed(b"x")
    assert issubclass(NDJSONLineTooLong, ValueError)


def test_complete_line_over_the_cap_raises_however_it_is_split() -> None:
    stream = b"0123456789ab\n"
    for offset in range(len(stream) + 1):
        with pytest.raises(NDJSONLineTooLong):
            split_lines([stream[:offset], stream[offset:]], max_line_bytes=10)


def test_line_at_exactly_the_cap_passes_however_it_is_split() -> None:
    stream = b"0123456789\r\n"
    for offset in range(len(stream) + 1):
        assert split_lines([stream[:offset], stream[offset:]], max_line_bytes=10) == [b"0123456789"]
    assert split_lines((stream[i : i + 1] for i in range(len(stream))), max_line_bytes=10) == [b"0123456789"]


def test_default_cap_is_16_mib() -> None:
    assert MAX_LINE_BYTES == 16 * 1024 * 1024
    assert NDJSONDecoder().max_line_bytes == MAX_LINE_BYTES
