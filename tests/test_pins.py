"""Client-secret pins in each dialect's own fields (asgi/pins.py)."""

from __future__ import annotations

from typing import Any

import pytest

from statefulproxy.asgi.pins import pin


@pytest.mark.parametrize(
    ("dialect", "body", "expected"),
    [
        ("openai", {"model": "x"}, {"model": "m", "max_tokens": 50}),
        (
            "openai",
            {"max_tokens": 10, "max_completion_tokens": 900},
            {"model": "m", "max_tokens": 10, "max_completion_tokens": 50},
        ),
        ("anthropic", {"model": "x", "max_tokens": 4096}, {"model": "m", "max_tokens": 50}),
        (
            "ollama",
            {"model": "x", "options": {"temperature": 0}},
            {"model": "m", "options": {"temperature": 0, "num_predict": 50}},
        ),
        ("gemini", {"generationConfig": {"maxOutputTokens": 70}}, {"generationConfig": {"maxOutputTokens": 50}}),
        ("gemini", {"contents": []}, {"contents": [], "generationConfig": {"maxOutputTokens": 50}}),
    ],
)
def test_pins(dialect: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    original = {key: (dict(value) if isinstance(value, dict) else value) for key, value in body.items()}
    assert pin(body, dialect, "m", 50) == expected
    assert body == original  # never mutated


def test_no_length_pin_leaves_lengths_alone() -> None:
    assert pin({"model": "x", "max_tokens": 9000}, "openai", "m", None) == {"model": "m", "max_tokens": 9000}
