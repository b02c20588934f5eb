"""The wire formats the proxy keeps sessions for, each recognised by its chat path (CONTRACT.md section 3)."""

from __future__ import annotations

import re

from .anthropic import AnthropicDialect
from .base import AssistantReply, Canonical, Dialect, DialectName, ReplyDecoder
from .gemini import GeminiDialect
from .ollama import OllamaDialect
from .openai import OpenAIDialect

__all__ = [
    "ANTHROPIC",
    "DIALECTS",
    "GEMINI",
    "OLLAMA",
    "OPENAI",
    "AssistantReply",
    "Canonical",
    "Dialect",
    "DialectName",
    "ReplyDecoder",
    "dialect_for_path",
]

OPENAI = OpenAIDialect()
ANTHROPIC = AnthropicDialect()
OLLAMA = OllamaDialect()
GEMINI = GeminiDialect()
DIALECTS: dict[DialectName, Dialect] = {
    "openai": OPENAI,
    "anthropic": ANTHROPIC,
    "ollama": OLLAMA,
    "gemini": GEMINI,
}

# Vertex puts the same body under .../publishers/google/models/{m}:..., so only the ending counts
_GEMINI_PATH = re.compile(r"/models/[^/]+:(?:generateContent|streamGenerateContent)")


def dialect_for_path(path: str) -> Dialect | None:
    """The dialect whose chat requests ``POST`` to ``path``, or None: everything else passes through.

    ``/v1/messages/count_tokens`` and ``/v1/messages/batches...`` do not end in ``/v1/messages``,
    so they pass through as the contract says.
    """
    if path.endswith("/chat/completions"):
        return OPENAI
    if path.endswith("/v1/messages"):
        return ANTHROPIC
    if path.endswith("/api/chat"):
        return OLLAMA
    if path.endswith("Content"):
        found = _GEMINI_PATH.search(path)
        if found is not None and found.end() == len(path):
            return GEMINI
    return None
