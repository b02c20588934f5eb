"""An incremental newline-delimited JSON (NDJSON) line splitter (sans-I/O).

Splits bytes, not text, on ``\\n`` (https://github.com/ndjson/ndjson-spec): the byte 0x0A never
occurs inside a multibyte UTF-8 sequence, so a character split across chunks is whole again in
its line. A line may end in ``\\r\\n``; blank lines are skipped. Parsing the lines is the caller's job.
"""

from __future__ import annotations

__all__ = ["MAX_LINE_BYTES", "NDJSONDecoder", "NDJSONLineTooLong"]

# Bound on one line, held or complete: the largest reply line an upstream plausibly sends.
MAX_LINE_BYTES = 16 * 1024 * 1024


class NDJSONLineTooLong(ValueError):
    """A line grew past the decoder's cap (``max_line_bytes``)."""


class NDJSONDecoder:
    """Turns a stream of bytes, chunked arbitrarily, into its complete non-blank lines.

    ``feed()`` returns the lines each chunk completes, without their line endings. After
    ``NDJSONLineTooLong`` the decoder must not be fed again.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes] = []  # pieces of the current unterminated line
        self._pending_len = 0

    @property
    def partial(self) -> bytes:
        """The unterminated line held so far (``b""`` when none)."""
        if len(self._pending) > 1:
            self._pending = [b"".join(self._pending)]
        return self._pending[0] if self._pending else b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Split ``chunk``; return the complete non-blank lines it ends (possibly none)."""
        if chunk.find(b"\n") < 0:
            if chunk:
                self._hold(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending, self._pending_len = [], 0
        *complete, rest = chunk.split(b"\n")
        lines: list[bytes] = []
        for line in complete:
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line_bytes:
                raise NDJSONLineTooLong(f"NDJSON line longer than {self.max_line_bytes} bytes")
            if line.strip():
                lines.append(line)
        if rest:
            self._hold(rest)
        return lines

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_len += len(piece)
        # A held "\r" may be the first half of the line's CRLF ending: it does not count, so that
        # a line at exactly the cap passes however the stream is split.
        if self._pending_len - piece.endswith(b"\r") > self.max_line_bytes:
            self._pending, self._pending_len = [], 0
            raise NDJSONLineTooLong(f"NDJSON line longer than {self.max_line_bytes} bytes")
