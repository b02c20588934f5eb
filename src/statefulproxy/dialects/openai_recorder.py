"""The streamed reply pipeline the response tap feeds: body bytes -> SSE events -> the reply (sans-I/O)."""

from __future__ import annotations

from .openai_stream import AssistantReply, ChatStreamAccumulator
from .sse import SSEDecodeError, SSEDecoder

__all__ = ["ChatStreamRecorder"]


class ChatStreamRecorder:
    """bytes -> ``SSEDecoder`` -> ``ChatStreamAccumulator``: what the response tap feeds each body chunk.

    ``done`` turns true on the very chunk that holds ``[DONE]``, so the caller can commit
    the turn before forwarding that chunk. Chunks after ``done`` or ``failed`` are ignored.
    """

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._accumulator = ChatStreamAccumulator()
        self._failed = False

    @property
    def done(self) -> bool:
        """True once the chunk holding ``[DONE]`` was fed, without a failure before it."""
        return self._accumulator.done and not self._failed

    @property
    def failed(self) -> bool:
        """True once the stream was found broken, erroneous or malformed."""
        return self._failed or self._accumulator.failed

    def feed(self, chunk: bytes) -> None:
        """Observe one body chunk. Never raises."""
        accumulator = self._accumulator
        if self._failed or accumulator.done or accumulator.failed:
            return
        decoder = self._decoder
        if (
            chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and len(chunk) <= decoder.max_buffer_bytes
            and decoder.idle_before(chunk)
        ):
            # Fast path for what providers send: whole `data: {...}\n\n` events. Each block is
            # an event the idle decoder would dispatch alone, so feeding the odd one (a comment,
            # an `event:` line, multi-line data) through it gives the same result.
            for block in chunk[:-2].split(b"\n\n"):
                if block.startswith(b"data: ") and b"\n" not in block:
                    accumulator.feed(block[6:])
                else:
                    self._feed_events(block + b"\n\n")
                if self._failed or accumulator.done or accumulator.failed:
                    return
            return
        self._feed_events(chunk)

    def _feed_events(self, chunk: bytes) -> None:
        accumulator = self._accumulator
        try:
            events = self._decoder.feed(chunk)
        except SSEDecodeError:
            self._failed = True
            return
        for event in events:
            if event.event == "error":
                self._failed = True
                return
            if event.event == "message":
                accumulator.feed(event.data)
                if accumulator.done or accumulator.failed:
                    return

    def result(self) -> AssistantReply:
        """The reassembled reply. Only valid once ``done``."""
        return self._accumulator.result()
