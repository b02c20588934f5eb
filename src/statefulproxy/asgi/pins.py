"""What a client secret's creator may pin in the requests it opens: the model and the reply length (sans-I/O).

A browser holding a secret chats on its creator's upstream key, so the creator decides what that
costs: a pinned model replaces the one sent, and a pinned ``max_tokens`` caps the reply in the
dialect's own field (Gemini names its model in the path: a pin there is left to the path).
"""

from __future__ import annotations

from typing import Any

# where each dialect caps the length of a reply: (container key or None, field)
_LENGTH_FIELDS: dict[str, tuple[tuple[str | None, str], ...]] = {
    "openai": ((None, "max_tokens"), (None, "max_completion_tokens")),
    "anthropic": ((None, "max_tokens"),),
    "ollama": (("options", "num_predict"),),
    "gemini": (("generationConfig", "maxOutputTokens"),),
}


def pin(body: dict[str, Any], dialect: str, model: str | None, max_tokens: int | None) -> dict[str, Any]:
    """``body`` with ``model`` set and every length field of ``dialect`` at most ``max_tokens`` (a new dict)."""
    out = dict(body)
    if model is not None and dialect != "gemini":
        out["model"] = model
    if max_tokens is None:
        return out
    fields = _LENGTH_FIELDS.get(dialect, ())
    for index, (container, name) in enumerate(fields):
        target = out
        if container is not None:
            inner = out.get(container)
            target = out[container] = dict(inner) if isinstance(inner, dict) else {}
        sent = target.get(name)
        # the dialect's main field is always set; an alternative one only capped when sent
        if index == 0 or sent is not None:
            target[name] = min(sent, max_tokens) if isinstance(sent, int) and not isinstance(sent, bool) else max_tokens
    return out
