"""The management API's request bodies and response objects, as msgspec models.

Each limit is stated once, here (or with the listings in api_models), and from here come the
validation of a request, the words of a refusal (api_codec) and the OpenAPI schemas. Limits
follow OpenAI's where it has them (metadata: at most 16 pairs, keys up to 64 characters, values
up to 512); unknown fields are refused, as OpenAI does, and null stands for an absent field.
The docstrings of these classes are their descriptions in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ..stores.base import UNCHANGED, ExpiryAnchor, NewSession, SessionLimits, SessionStatus, Unchanged
from ..stores.base import ExpiresAfter as StoredExpiresAfter
from ..stores.base import HistoryWindow as WindowLimits
from .api_codec import refuse
from .api_models import SessionId, Title

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_EXPIRY_SECONDS = 365 * 24 * 3600
MAX_CLIENT_SECRET_SECONDS = 7 * 24 * 3600
DEFAULT_CLIENT_SECRET_SECONDS = 600
SECRET_RPM = 20  # the per-minute limit of a session created with a client secret, unless it sets one
MAX_COUNT = 2**31 - 1  # any count a client sets: JSON allows integers too big to write back

_PAIRS = (
    f"'{{name}}' keys must be at most {MAX_METADATA_KEY} characters, values strings of at most {MAX_METADATA_VALUE}."
)
Metadata = Annotated[
    dict[
        Annotated[str, Meta(max_length=MAX_METADATA_KEY), refuse(_PAIRS)],
        Annotated[str, Meta(max_length=MAX_METADATA_VALUE), refuse(_PAIRS)],
    ],
    Meta(max_length=MAX_METADATA_PAIRS),
    refuse(
        "'{name}' must be an object of string values.",
        too_long=f"'{{name}}' may hold at most {MAX_METADATA_PAIRS} pairs.",
    ),
]
Count = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
WindowLimit = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
Usage = Annotated[dict[str, int], Meta(description="Token totals the upstream reported for this session's turns.")]


class Model(msgspec.Struct, forbid_unknown_fields=True):
    """Every object of the API is closed: a field it does not define is refused."""


# --- requests


class ExpiresAfter(Model):
    """An absolute expiry: the session becomes `expired` `seconds` after `anchor`."""

    anchor: Annotated[ExpiryAnchor, refuse(param="expires_after")]
    seconds: Annotated[int, Meta(ge=1, le=MAX_EXPIRY_SECONDS)]


class RateLimitsRequest(Model):
    max_requests_per_1_minute: Count | None = None


class HistoryWindowRequest(Model):
    """What is spliced upstream (never what is stored); an omitted or null limit is 0, no limit."""

    max_messages: WindowLimit | None = None
    max_tokens: WindowLimit | None = None

    def window(self) -> WindowLimits:
        return self.max_messages or 0, self.max_tokens or 0


SecretDialect = Literal["openai", "anthropic", "ollama", "gemini"]
_DIALECTS = ", ".join(get_args(SecretDialect))
_SecretSeconds = Annotated[int, Meta(ge=1, le=MAX_CLIENT_SECRET_SECONDS)]
_ANCHORS_AT = refuse("'client_secret.expires_after' anchors at created_at.", param="client_secret")


class ClientSecretExpiry(Model):
    """OpenAI's form of a client secret's lifetime."""

    seconds: Annotated[_SecretSeconds, refuse(name="client_secret.expires_after")]
    anchor: Annotated[Literal["created_at"], _ANCHORS_AT] = "created_at"


class ClientSecretRequest(Model):
    """A client secret for a browser: it may chat on and read this one session only."""

    expires_after: _SecretSeconds | Annotated[ClientSecretExpiry, _ANCHORS_AT] = DEFAULT_CLIENT_SECRET_SECONDS
    dialect: (
        Annotated[SecretDialect, refuse(f"'{{name}}' must be one of {_DIALECTS}.", param="client_secret")] | None
    ) = None
    model: Annotated[str, Meta(min_length=1), refuse(param="client_secret")] | None = None
    max_tokens: Count | None = None

    def seconds(self) -> int:
        expires_after = self.expires_after
        return expires_after if isinstance(expires_after, int) else expires_after.seconds

    def grant(self) -> dict[str, Any]:
        """The pins a chat request on the secret is held to."""
        return {"dialect": self.dialect or "openai", "model": self.model, "max_tokens": self.max_tokens}


_EXPIRES_AFTER = refuse('\'expires_after\' must be {"anchor": ..., "seconds": ...}.')
_RATE_LIMITS = refuse("'rate_limits' must be {\"max_requests_per_1_minute\": n}.")
_WINDOW = refuse('\'history_window\' must be {"max_messages": n, "max_tokens": n}.')
_SECRET = refuse('\'client_secret\' must be {"expires_after": seconds, "dialect", "model", "max_tokens"}.')


class CreateSessionRequest(Model):
    """A new session. A field of null is as if it were absent."""

    title: Title | None = None
    metadata: Metadata | None = None
    expires_after: Annotated[ExpiresAfter, _EXPIRES_AFTER] | None = None
    rate_limits: Annotated[RateLimitsRequest, _RATE_LIMITS] | None = None
    max_requests: Count | None = None
    history_window: Annotated[HistoryWindowRequest, _WINDOW] | None = None
    client_secret: Annotated[ClientSecretRequest, _SECRET] | None = None

    def new_session(self) -> NewSession:
        per_minute = None if self.rate_limits is None else self.rate_limits.max_requests_per_1_minute
        if self.client_secret is not None and per_minute is None:
            per_minute = SECRET_RPM  # a browser holds the secret: a session it may drive gets a rate limit
        expiry = self.expires_after
        return NewSession(
            title=self.title,
            metadata=self.metadata or {},
            expires_after=None if expiry is None else StoredExpiresAfter(expiry.anchor, expiry.seconds),
            limits=SessionLimits(max_requests_per_1_minute=per_minute, max_requests=self.max_requests),
            history_window=None if self.history_window is None else self.history_window.window(),
        )


class UpdateSessionRequest(Model):
    """Only the fields present change; a `history_window` of null removes the window."""

    title: Title | None = None
    metadata: Metadata | None = None
    history_window: Annotated[HistoryWindowRequest, _WINDOW] | UnsetType | None = UNSET

    def window(self) -> WindowLimits | Unchanged | None:
        window = self.history_window
        if isinstance(window, UnsetType):
            return UNCHANGED
        return None if window is None else window.window()


class ForkSessionRequest(Model):
    """A copy of the history up to and including `up_to_message_id` (all of it by default)."""

    up_to_message_id: Annotated[str, refuse("'{name}' must be a message id.")] | None = None
    title: Title | None = None


# --- responses


class RateLimits(Model):
    max_requests_per_1_minute: Count | None


class HistoryWindow(Model):
    """What is spliced upstream (never what is stored), 0 no limit; null: the settings' window."""

    max_messages: WindowLimit
    max_tokens: WindowLimit


class Session(Model):
    id: SessionId
    object: Literal["session"]
    title: str | None
    status: SessionStatus
    message_count: Annotated[int, Meta(ge=0)]
    created_at: int
    last_active_at: int
    expires_at: Annotated[int | None, Meta(description="When it expires or expired; null when never.")]
    expires_after: ExpiresAfter | None
    rate_limits: RateLimits
    max_requests: Count | None
    request_count: Annotated[int, Meta(ge=0)]
    history_window: HistoryWindow | None
    namespace: Annotated[str | None, Meta(description="The path prefix it was created under, if any.")]
    metadata: Metadata
    usage: Usage


class ClientSecret(Model):
    value: Annotated[str, Meta(pattern="^spcs_")]
    expires_at: int


class CreatedSession(Session):
    """A new session; `client_secret` is present when one was requested, and shown only here."""

    client_secret: ClientSecret | UnsetType = UNSET


class SessionList(Model):
    object: Literal["list"]
    data: list[Session]
    first_id: str | None
    last_id: str | None
    has_more: bool


class SessionDeleted(Model):
    id: str
    object: Literal["session.deleted"]
    deleted: Annotated[bool, Meta(extra_json_schema={"const": True})]


class ToolCallFunction(Model):
    name: str
    arguments: str


class ToolCall(Model):
    id: str
    type: str
    function: ToolCallFunction


class Message(Model):
    id: str
    object: Literal["session.message"]
    role: str
    content: str | list[dict[str, Any]] | None
    created_at: int
    name: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    refusal: str | UnsetType = UNSET
    reasoning: str | UnsetType = UNSET
    metadata: (
        Annotated[dict[str, Any], Meta(description="What the simple chat API kept with the turn.")] | UnsetType
    ) = UNSET
    usage: (
        Annotated[dict[str, Any], Meta(description="A reply's token usage, as its upstream reported it.")] | UnsetType
    ) = UNSET
    model: Annotated[str, Meta(description="The model that wrote a reply.")] | UnsetType = UNSET
    finish_reason: Annotated[str, Meta(description="Why a reply ended, as its upstream said.")] | UnsetType = UNSET
    dialect: (
        Annotated[str, Meta(description="The wire format a reply's turn came in (openai, anthropic, ...).")] | UnsetType
    ) = UNSET


class MessageList(Model):
    object: Literal["list"]
    data: list[Message]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ErrorDetail(Model):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(Model):
    error: ErrorDetail
