"""An incremental Server-Sent Events decoder (sans-I/O).

Follows the WHATWG event-stream parsing rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
lines end in CRLF, LF or CR; ``:`` starts a comment; a blank line dispatches the event.
Bytes are split into lines first and each complete line is decoded on its own, so a
multibyte character split across chunks decodes correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_BUFFER_BYTES", "SSEDecodeError", "SSEDecoder", "ServerSentEvent"]

# Bound on a partial line held between chunks, and on the data lines of one event.
MAX_BUFFER_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


class SSEDecodeError(ValueError):
    """A partial line, or the data of one event, grew past the decoder's cap (``MAX_BUFFER_BYTES``)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event. ``id`` is the stream's last event id at dispatch time."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns the bytes of an event stream, chunked arbitrarily, into events.

    ``feed()`` returns the events each chunk completes; ``flush()`` ends the stream. After
    ``SSEDecodeError`` the decoder must not be fed again.
    """

    def __init__(self, max_buffer_bytes: int = MAX_BUFFER_BYTES) -> None:
        self.max_buffer_bytes = self._max_buffer_bytes = max_buffer_bytes
        self._pending: list[bytes] = []  # pieces of the current unterminated line
        self._pending_len = 0
        self._at_start = True  # no byte seen yet: a BOM may still come
        self._skip_lf = False  # the last chunk ended in CR: an LF opening the next one is the same line ending
        self._data: list[str] = []
        self._data_len = 0
        self._event_type = ""
        self._retry: int | None = None
        self._last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk``; return the events it completes (possibly none)."""
        if self._at_start:
            head = b"".join(self._pending) + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._pending = [head] if head else []
                self._pending_len = len(head)
                return []
            self._at_start = False
            self._pending, self._pending_len = [], 0
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if not chunk:
            return []

        last = chunk[-1]
        terminated = last == 0x0A or last == 0x0D
        if not terminated and chunk.find(b"\n") < 0 and chunk.find(b"\r") < 0:
            self._hold(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending, self._pending_len = [], 0

        # bytes.splitlines splits on exactly CR, LF and CRLF: the three SSE line endings.
        lines = chunk.splitlines()
        if terminated:
            self._skip_lf = last == 0x0D
        else:
            self._hold(lines.pop())

        events: list[ServerSentEvent] = []
        for line in lines:
            if line:
                self._process_field(line)
            elif self._data:
                events.append(self._dispatch())
            else:
                self._event_type = ""
                self._retry = None
        return events

    def idle_before(self, chunk: bytes) -> bool:
        """True when ``chunk`` starts between two events: nothing partial is held and no BOM can
        follow. A caller that then decodes ``chunk`` itself takes it as fed."""
        if self._at_start:
            if self._pending or chunk[:1] == _BOM[:1]:
                return False
            self._at_start = False
        return not (self._pending or self._data or self._skip_lf or self._event_type or self._retry is not None)

    def flush(self) -> list[ServerSentEvent]:
        """End the stream. An event not ended by a blank line is discarded, so this returns ``[]``."""
        self._pending, self._pending_len = [], 0
        self._data, self._data_len = [], 0
        self._event_type = ""
        self._retry = None
        return []

    def _hold(self, partial: bytes) -> None:
        self._pending.append(partial)
        self._pending_len += len(partial)
        if self._pending_len > self._max_buffer_bytes:
            self._pending, self._pending_len = [], 0
            raise SSEDecodeError(f"event stream line longer than {self._max_buffer_bytes} bytes")

    def _process_field(self, line: bytes) -> None:
        if line.startswith(b"data: "):  # by far the commonest line: skip the general parse
            name, value = "data", line[6:].decode("utf-8", "replace")
        elif line[0] == 0x3A:  # ":" starts a comment
            return
        else:
            name, _, value = line.decode("utf-8", "replace").partition(":")
            if value[:1] == " ":
                value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_len += len(line)
            if self._data_len > self._max_buffer_bytes:
                self._data, self._data_len = [], 0
                raise SSEDecodeError(f"event stream event larger than {self._max_buffer_bytes} bytes")
        elif name == "event":
            self._event_type = value
        elif name == "id" and "\0" not in value:
            self._last_event_id = value
        # int() refuses strings past 4300 digits (CVE-2020-10735); no sane delay needs 19 digits
        elif name == "retry" and value.isascii() and value.isdigit() and len(value) < 19:
            self._retry = int(value)
        # any other field name is ignored, as the spec says

    def _dispatch(self) -> ServerSentEvent:
        event = ServerSentEvent(
            event=self._event_type or "message",
            data=self._data[0] if len(self._data) == 1 else "\n".join(self._data),
            id=self._last_event_id,
            retry=self._retry,
        )
        self._data, self._data_len = [], 0
        self._event_type = ""
        self._retry = None
        return event
