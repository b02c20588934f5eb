"""Wire formats of the scripted upstream: how one scripted reply is framed for each provider's API.

A *wire* renders the scripted replies of ``harness.upstream`` (a ``Completion``, an error status, an in-band
error) in one provider's format, for one request. The route decides the wire (matched on the path's ending):

- ``.../chat/completions`` and every other path: ``OpenAIWire``, the format ``Completion`` renders itself.
- ``POST .../v1/messages`` (``ANTHROPIC_PATH``): ``AnthropicWire``; streams with ``"stream": true`` as SSE with
  ``event:`` names (message_start, content blocks, ping, message_delta, message_stop).
- ``POST .../api/chat`` (``OLLAMA_PATH``): ``OllamaWire``; NDJSON lines unless ``"stream": false``.
- ``POST .../models/{model}:generateContent`` / ``:streamGenerateContent`` (``GEMINI_PATH`` /
  ``GEMINI_STREAM_PATH``): ``GeminiWire``; the stream is SSE with ``?alt=sse``, else a JSON array sent element
  by element.

How a ``Completion`` maps: ``reasoning`` is an Anthropic thinking block (signed by ``signature`` through a
``signature_delta``), Ollama ``thinking`` fragments, Gemini ``{text, thought: true}`` parts; ``content`` then
``refusal`` are plain text; ``tool_calls`` ``(id, name, arguments_json)`` are ``tool_use`` blocks (arguments
streamed as ``input_json_delta`` pieces, the first one empty), Ollama ``tool_calls`` with object arguments
(all in one line), Gemini ``functionCall{name, args}`` parts (no id, as the Gemini API sends them).
``thought_signature`` goes on the first functionCall part, else on the last text part. Finish reasons map
``stop``/``tool_calls``/``length`` to each provider's own names; any other value is sent verbatim.

A stream is ``events`` then ``terminal`` (Anthropic message_stop, Ollama's ``done: true`` line, Gemini's chunk
with finishReason, OpenAI ``[DONE]``); ``no_done`` sends ``unfinished`` instead: the events without the
terminal one (for Gemini: every chunk, the last one without finishReason). ``cut``, ``hold`` and
``inband_error`` count ``after_chunks`` in ``events``.

Usage follows the upstream's rule (prompt = 10 x request messages or Gemini contents, completion = characters
generated): Anthropic ``input_tokens``/``output_tokens``, Ollama ``prompt_eval_count``/``eval_count``, Gemini
``promptTokenCount``/``candidatesTokenCount`` (+ ``thoughtsTokenCount`` for the reasoning)/``totalTokenCount``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from harness.upstream import Completion, Exchange, RecordedRequest

__all__ = [
    "ANTHROPIC_PATH",
    "CHAT_PATHS",
    "DONE",
    "GEMINI_PATH",
    "GEMINI_STREAM_PATH",
    "OLLAMA_CREATED_AT",
    "OLLAMA_PATH",
    "AnthropicWire",
    "GeminiWire",
    "OllamaWire",
    "OpenAIWire",
    "Wire",
    "is_chat_path",
    "sse",
    "wire_for_path",
]

ANTHROPIC_PATH = "/v1/messages"
OLLAMA_PATH = "/api/chat"
GEMINI_PATH = ":generateContent"
GEMINI_STREAM_PATH = ":streamGenerateContent"
CHAT_PATHS = ("/chat/completions", ANTHROPIC_PATH, OLLAMA_PATH, GEMINI_PATH, GEMINI_STREAM_PATH)
OLLAMA_CREATED_AT = "2023-11-14T22:13:20.000000Z"  # harness.upstream.CREATED as Ollama writes it

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]


def sse(payload: Any) -> bytes:
    """One SSE event ``data: <compact json>\\n\\n``."""
    return b"data: " + _compact(payload) + b"\n\n"


def _compact(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def pieces(value: str, size: int) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)]


def is_chat_path(path: str) -> bool:
    """Whether ``path`` is a chat request of any dialect (these get the default ``reply N``)."""
    return path.endswith(CHAT_PATHS)


def _visible_text(completion: Completion) -> str | None:
    """Content then refusal: the providers other than OpenAI have no refusal field."""
    if completion.content is None and completion.refusal is None:
        return None
    return (completion.content or "") + (completion.refusal or "")


def _error_message(error: Any) -> Any:
    return error.get("message", error) if isinstance(error, dict) else error


class Wire:
    """One request's framing of scripted replies; the base is the OpenAI chat completions format."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    @staticmethod
    def requests_stream(request: RecordedRequest, body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    def stream_headers(self) -> list[tuple[str, str]]:
        return list(SSE_HEADERS)

    def body(self, completion: Completion) -> Any:
        """The non-streamed reply."""
        raise NotImplementedError

    def events(self, completion: Completion) -> list[Any]:
        """The stream's payloads before the terminal ones."""
        raise NotImplementedError

    def terminal(self, completion: Completion) -> list[Any]:
        """The payloads that mark the stream complete (what ``no_done`` leaves out)."""
        raise NotImplementedError

    def unfinished(self, completion: Completion) -> list[Any]:
        """The whole stream as ``no_done`` sends it."""
        return self.events(completion)

    def error_event(self, error: Any) -> Any:
        """An in-band error payload; ``error`` None means the provider's usual server error."""
        raise NotImplementedError

    def error_body(self, status: int) -> Any:
        """The default body of a scripted ``error(status)``."""
        raise NotImplementedError

    def frame(self, payload: Any) -> bytes:
        return sse(payload)

    def close(self) -> bytes:
        """Bytes that end the body after the last frame."""
        return b""


class OpenAIWire(Wire):
    """OpenAI chat completions: SSE ``data:`` chunks ending in ``data: [DONE]``."""

    def body(self, completion: Completion) -> Any:
        return completion.completion_json(self.exchange)

    def events(self, completion: Completion) -> list[Any]:
        return completion.chunks(self.exchange)

    def terminal(self, completion: Completion) -> list[Any]:
        return [DONE]

    def error_event(self, error: Any) -> Any:
        if error is None:
            error = {"message": "The server had an error", "type": "server_error", "code": None}
        return {"error": error}

    def error_body(self, status: int) -> Any:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": f"scripted error {status}", "type": kind, "param": None, "code": None}}

    def frame(self, payload: Any) -> bytes:
        return payload if payload is DONE else sse(payload)


ANTHROPIC_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
PING = {"type": "ping"}


class AnthropicWire(Wire):
    """Anthropic Messages: SSE events named after their ``type``."""

    @property
    def message_id(self) -> str:
        return f"msg_{self.exchange.number}"

    def _stop_reason(self, completion: Completion) -> str:
        reason = completion.resolved_finish_reason
        return ANTHROPIC_STOP_REASONS.get(reason, reason)

    def _blocks(self, completion: Completion) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each content block as (its ``content_block_start`` form, its deltas), in order."""
        size = completion.chunk_size
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if completion.reasoning is not None:
            deltas = [{"type": "thinking_delta", "thinking": piece} for piece in pieces(completion.reasoning, size)]
            if completion.signature is not None:
                deltas.append({"type": "signature_delta", "signature": completion.signature})
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
        text = _visible_text(completion)
        if text is not None:
            text_deltas = [{"type": "text_delta", "text": piece} for piece in pieces(text, size)]
            blocks.append(({"type": "text", "text": ""}, text_deltas))
        for call_id, name, arguments in completion.tool_calls:
            json_deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *pieces(arguments, size)]]
            blocks.append(({"type": "tool_use", "id": call_id, "name": name, "input": {}}, json_deltas))
        return blocks

    def body(self, completion: Completion) -> Any:
        content: list[dict[str, Any]] = []
        if completion.reasoning is not None:
            signature = completion.signature or ""
            content.append({"type": "thinking", "thinking": completion.reasoning, "signature": signature})
        text = _visible_text(completion)
        if text is not None:
            content.append({"type": "text", "text": text})
        for call_id, name, arguments in completion.tool_calls:
            content.append({"type": "tool_use", "id": call_id, "name": name, "input": json.loads(arguments)})
        usage = completion.usage(self.exchange)
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.exchange.model,
            "content": content,
            "stop_reason": self._stop_reason(completion),
            "stop_sequence": None,
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
        }

    def events(self, completion: Completion) -> list[Any]:
        usage = completion.usage(self.exchange)
        message = self.body(completion) | {"content": [], "stop_reason": None}
        # message_start reports the first output token or so; message_delta carries the cumulative count.
        message["usage"] = {"input_tokens": usage["prompt_tokens"], "output_tokens": min(1, usage["completion_tokens"])}
        events: list[Any] = [{"type": "message_start", "message": message}]
        for index, (start, deltas) in enumerate(self._blocks(completion)):
            events.append({"type": "content_block_start", "index": index, "content_block": start})
            if index == 0:
                events.append(PING)  # Anthropic sends its ping right after the first block starts
            events += [{"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas]
            events.append({"type": "content_block_stop", "index": index})
        if len(events) == 1:
            events.append(PING)
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop_reason(completion), "stop_sequence": None},
                "usage": {"output_tokens": usage["completion_tokens"]},
            }
        )
        return events

    def terminal(self, completion: Completion) -> list[Any]:
        return [{"type": "message_stop"}]

    def error_event(self, error: Any) -> Any:
        return {"type": "error", "error": error or {"type": "overloaded_error", "message": "Overloaded"}}

    def error_body(self, status: int) -> Any:
        kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": f"scripted error {status}"}}

    def frame(self, payload: Any) -> bytes:
        return f"event: {payload['type']}\n".encode() + sse(payload)


OLLAMA_DONE_REASONS = {"stop": "stop", "tool_calls": "stop", "length": "length"}


class OllamaWire(Wire):
    """Ollama ``/api/chat``: NDJSON lines, streamed unless ``"stream": false``."""

    @staticmethod
    def requests_stream(request: RecordedRequest, body: dict[str, Any]) -> bool:
        return body.get("stream") is not False

    def stream_headers(self) -> list[tuple[str, str]]:
        return [("content-type", "application/x-ndjson")]

    def _line(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.exchange.model,
            "created_at": OLLAMA_CREATED_AT,
            "message": {"role": "assistant", **message},
            "done": False,
        }

    def _final(self, completion: Completion, message: dict[str, Any]) -> dict[str, Any]:
        usage = completion.usage(self.exchange)
        reason = completion.resolved_finish_reason
        return self._line(message) | {
            "done": True,
            "done_reason": OLLAMA_DONE_REASONS.get(reason, reason),
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": usage["prompt_tokens"],
            "prompt_eval_duration": 200_000,
            "eval_count": usage["completion_tokens"],
            "eval_duration": 700_000,
        }

    @staticmethod
    def _tool_calls(completion: Completion) -> list[dict[str, Any]]:
        return [
            {"id": call_id, "function": {"index": index, "name": name, "arguments": json.loads(arguments)}}
            for index, (call_id, name, arguments) in enumerate(completion.tool_calls)
        ]

    def body(self, completion: Completion) -> Any:
        message: dict[str, Any] = {"content": _visible_text(completion) or ""}
        if completion.reasoning is not None:
            message["thinking"] = completion.reasoning
        if completion.tool_calls:
            message["tool_calls"] = self._tool_calls(completion)
        return self._final(completion, message)

    def events(self, completion: Completion) -> list[Any]:
        size = completion.chunk_size
        lines = [self._line({"content": "", "thinking": p}) for p in pieces(completion.reasoning or "", size)]
        lines += [self._line({"content": p}) for p in pieces(_visible_text(completion) or "", size)]
        if completion.tool_calls:
            lines.append(self._line({"content": "", "tool_calls": self._tool_calls(completion)}))
        return lines

    def terminal(self, completion: Completion) -> list[Any]:
        return [self._final(completion, {"content": ""})]

    def error_event(self, error: Any) -> Any:
        if error is None:
            return {"error": "an error was encountered while running the model"}
        return {"error": _error_message(error)}

    def error_body(self, status: int) -> Any:
        return {"error": f"scripted error {status}"}

    def frame(self, payload: Any) -> bytes:
        return _compact(payload) + b"\n"


GEMINI_FINISH_REASONS = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GeminiWire(Wire):
    """Gemini ``generateContent`` / ``streamGenerateContent`` (SSE with ``?alt=sse``, else a JSON array)."""

    def __init__(self, exchange: Exchange) -> None:
        super().__init__(exchange)
        query = parse_qs(exchange.request.query_string.decode("latin-1"))
        self.alt_sse = query.get("alt") == ["sse"]
        # The model is in the path: .../models/{model}:generateContent
        self.model = exchange.request.path.rpartition("/models/")[2].partition(":")[0] or exchange.model
        self._frames_sent = 0

    @staticmethod
    def requests_stream(request: RecordedRequest, body: dict[str, Any]) -> bool:
        return request.path.endswith(GEMINI_STREAM_PATH)

    def stream_headers(self) -> list[tuple[str, str]]:
        if self.alt_sse:
            return [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        return [("content-type", "application/json; charset=UTF-8")]

    @staticmethod
    def _chunk_parts(completion: Completion) -> list[list[dict[str, Any]]]:
        """The parts of each streamed chunk, the thought signature already placed."""
        size = completion.chunk_size
        chunks = [[{"text": p, "thought": True}] for p in pieces(completion.reasoning or "", size)]
        chunks += [[{"text": p}] for p in pieces(_visible_text(completion) or "", size)]
        if completion.tool_calls:
            chunks.append([{"functionCall": {"name": n, "args": json.loads(a)}} for _, n, a in completion.tool_calls])
        if not chunks:
            chunks.append([{"text": ""}])
        _place_thought_signature([part for parts in chunks for part in parts], completion.thought_signature)
        return chunks

    def _usage(self, completion: Completion, *, final: bool) -> dict[str, int]:
        usage = completion.usage(self.exchange)
        prompt = usage["prompt_tokens"]
        if not final:
            return {"promptTokenCount": prompt, "totalTokenCount": prompt}
        thoughts = len(completion.reasoning or "")
        metadata = {"promptTokenCount": prompt, "candidatesTokenCount": usage["completion_tokens"] - thoughts}
        metadata["totalTokenCount"] = usage["total_tokens"]
        if thoughts:
            metadata["thoughtsTokenCount"] = thoughts
        return metadata

    def _response(self, parts: list[dict[str, Any]], usage: dict[str, int], finish: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": f"resp-{self.exchange.number}",
        }

    def _finish_reason(self, completion: Completion) -> str:
        reason = completion.resolved_finish_reason
        return GEMINI_FINISH_REASONS.get(reason, reason)

    def body(self, completion: Completion) -> Any:
        parts: list[dict[str, Any]] = []
        if completion.reasoning is not None:
            parts.append({"text": completion.reasoning, "thought": True})
        text = _visible_text(completion)
        if text is not None or not (parts or completion.tool_calls):
            parts.append({"text": text or ""})
        parts += [{"functionCall": {"name": n, "args": json.loads(a)}} for _, n, a in completion.tool_calls]
        _place_thought_signature(parts, completion.thought_signature)
        return self._response(parts, self._usage(completion, final=True), self._finish_reason(completion))

    def events(self, completion: Completion) -> list[Any]:
        usage = self._usage(completion, final=False)
        return [self._response(parts, usage, None) for parts in self._chunk_parts(completion)[:-1]]

    def terminal(self, completion: Completion) -> list[Any]:
        last = self._chunk_parts(completion)[-1]
        return [self._response(last, self._usage(completion, final=True), self._finish_reason(completion))]

    def unfinished(self, completion: Completion) -> list[Any]:
        usage = self._usage(completion, final=False)
        return [self._response(parts, usage, None) for parts in self._chunk_parts(completion)]

    def error_event(self, error: Any) -> Any:
        return {"error": error or {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}

    def error_body(self, status: int) -> Any:
        status_name = GEMINI_STATUSES.get(status, "UNKNOWN")
        return {"error": {"code": status, "message": f"scripted error {status}", "status": status_name}}

    def frame(self, payload: Any) -> bytes:
        if self.alt_sse:
            return b"data: " + _compact(payload) + b"\r\n\r\n"
        separator = b"[" if self._frames_sent == 0 else b",\r\n"
        self._frames_sent += 1
        return separator + _compact(payload)

    def close(self) -> bytes:
        if self.alt_sse:
            return b""
        return b"]" if self._frames_sent else b"[]"


def _place_thought_signature(parts: list[dict[str, Any]], signature: str | None) -> None:
    """Put ``thoughtSignature`` beside the first functionCall part, else the last text part that is not a thought."""
    if signature is None:
        return
    calls = [part for part in parts if "functionCall" in part]
    answers = [part for part in parts if "text" in part and not part.get("thought")]
    target = calls[0] if calls else answers[-1] if answers else parts[-1]
    target["thoughtSignature"] = signature


WIRES: tuple[tuple[str, type[Wire]], ...] = (
    (ANTHROPIC_PATH, AnthropicWire),
    (OLLAMA_PATH, OllamaWire),
    (GEMINI_PATH, GeminiWire),
    (GEMINI_STREAM_PATH, GeminiWire),
)


def wire_for_path(path: str) -> type[Wire]:
    """The wire of the dialect whose endpoint ``path`` ends with; OpenAI's for every other path."""
    for suffix, wire in WIRES:
        if path.endswith(suffix):
            return wire
    return OpenAIWire
