from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from statefulproxy.errors import ConfigError
from statefulproxy.routes import Route
from statefulproxy.settings import Settings, load_settings, settings_from_mapping

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
FIELDS = [field.name for field in dataclasses.fields(Settings)]


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "statefulproxy.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def parsed(key: str, value: Any) -> Any:
    return getattr(settings_from_mapping({key: value}, source="test"), key)


def config_error(key: str, value: Any) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({key: value}, source="test")
    return str(info.value)


# --- defaults and the example file -----------------------------------------


def test_defaults() -> None:
    settings = load_settings({}, {})
    assert settings == Settings()
    assert settings.upstream is None
    assert settings.store == "memory://"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.session_ttl == 86400.0
    assert settings.session_headers == ("session-id", "x-session-id", "sessionid", "session_id")
    assert (settings.sessions_prefix, settings.health_prefix) == ("/v1/sessions", "")
    assert settings.max_body_size == 32 * 1024 * 1024
    assert (settings.connect_timeout, settings.read_timeout) == (10.0, 600.0)
    assert settings.upstream_max_connections == 1000
    assert settings.forward_store is False
    assert settings.replay_reasoning == "auto"
    assert (settings.profile, settings.routes, settings.session_namespaces) == ("openai", (), ())
    assert settings.scope_secret is None
    assert (settings.log_level, settings.access_log) == ("info", False)
    assert (settings.log_format, settings.shutdown_timeout, settings.metrics_port) == ("text", 30.0, None)
    assert (settings.ui, settings.ui_prefix, settings.cors_origins) == (True, "/ui", ())


def test_example_config_sets_every_key_to_its_default() -> None:
    keys = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert sorted(keys) == sorted(FIELDS)
    settings = load_settings({"config": str(EXAMPLE)}, {})
    assert settings == Settings(upstream="https://api.openai.com")


def test_settings_is_frozen_and_slotted() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    assert not hasattr(settings, "__dict__")


def test_constructing_settings_validates_and_normalises() -> None:
    assert Settings(session_headers=("X-Session",), upstream="http://h/api/").session_headers == ("x-session",)
    assert Settings(upstream="http://h/api/").upstream == "http://h/api"
    with pytest.raises(ConfigError, match=r"^port: .*\(got 0 from Settings\(\)\)$"):
        Settings(port=0)


def test_repr_hides_secrets() -> None:
    settings = Settings(store="redis://user:hunter2@redis:6379/0", scope_secret="s3cret-key")
    text = repr(settings)
    assert "hunter2" not in text
    assert "s3cret-key" not in text
    assert "store='redis://user:***@redis:6379/0'" in text
    assert "scope_secret=<hidden>" in text


# --- precedence -------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "file_value", "env_value", "cli_value", "expected"),
    [
        ("port", "8001", "8002", "8003", (8001, 8002, 8003)),
        ("store", "redis://file", "redis://env", "redis://cli", ("redis://file", "redis://env", "redis://cli")),
        ("host", "0.0.0.0", "::1", "localhost", ("0.0.0.0", "::1", "localhost")),
        ("session_ttl", "1h", "2h", "3h", (3600.0, 7200.0, 10800.0)),
        ("log_level", "debug", "warning", "error", ("debug", "warning", "error")),
    ],
)
def test_precedence_cli_env_file_default(
    tmp_path: Path, key: str, file_value: str, env_value: str, cli_value: str, expected: tuple[Any, ...]
) -> None:
    path = write_config(tmp_path, f"{key}: {file_value!r}\n")
    env = {"STATEFULPROXY_" + key.upper(): env_value}
    from_file, from_env, from_cli = expected
    assert getattr(load_settings({}, {}), key) == getattr(Settings(), key)
    assert getattr(load_settings({"config": path}, {}), key) == from_file
    assert getattr(load_settings({"config": path}, env), key) == from_env
    assert getattr(load_settings({"config": path, key: cli_value}, env), key) == from_cli


def test_cli_none_means_not_given(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port: 9001\n")
    cli = {"config": path, "port": None, "store": None, "upstream": None, "log_level": None}
    settings = load_settings(cli, {"STATEFULPROXY_STORE": "redis://r:6379/0"})
    assert (settings.port, settings.store, settings.upstream) == (9001, "redis://r:6379/0", None)


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, "upstream: http://from-file:8000/\n")
    settings = load_settings({}, {"STATEFULPROXY_CONFIG": path})
    assert settings.upstream == "http://from-file:8000"


def test_config_flag_beats_config_environment_variable(tmp_path: Path) -> None:
    chosen = write_config(tmp_path, "port: 7001\n")
    settings = load_settings({"config": chosen}, {"STATEFULPROXY_CONFIG": str(tmp_path / "missing.yaml")})
    assert settings.port == 7001


def test_unknown_environment_variables_are_ignored() -> None:
    settings = load_settings({}, {"STATEFULPROXY_BOGUS": "1", "STATEFULPROXY_": "x", "PORT": "1"})
    assert settings == Settings()


def test_every_key_has_an_environment_variable() -> None:
    env = {
        "STATEFULPROXY_UPSTREAM": "https://example.com/api/",
        "STATEFULPROXY_STORE": "rediss://cache:6380/2",
        "STATEFULPROXY_STORE_PREFIX": "prod:eu",
        "STATEFULPROXY_WORKERS": "4",
        "STATEFULPROXY_HOST": "0.0.0.0",
        "STATEFULPROXY_PORT": "9000",
        "STATEFULPROXY_SESSION_TTL": "none",
        "STATEFULPROXY_SESSION_HEADERS": "X-Conversation, X-Session-Id",
        "STATEFULPROXY_SESSIONS_PREFIX": "/api/sessions",
        "STATEFULPROXY_HEALTH_PREFIX": "/_",
        "STATEFULPROXY_MAX_BODY_SIZE": "1MiB",
        "STATEFULPROXY_CONNECT_TIMEOUT": "2.5",
        "STATEFULPROXY_READ_TIMEOUT": "NONE",
        "STATEFULPROXY_UPSTREAM_MAX_CONNECTIONS": "0",
        "STATEFULPROXY_FORWARD_STORE": "yes",
        "STATEFULPROXY_REPLAY_REASONING": "reasoning_content",
        "STATEFULPROXY_PROFILE": "vllm",
        "STATEFULPROXY_ROUTES": '[{"prefix": "/a", "upstream": "https://api.anthropic.com", "profile": "anthropic"}]',
        "STATEFULPROXY_SESSION_NAMESPACES": "/document/{doc}, /team/{t}/chat/{c}",
        "STATEFULPROXY_SIMPLE_CHAT_PREFIX": "/api/v1/chat",
        "STATEFULPROXY_MAX_TURN_DURATION": "2h",
        "STATEFULPROXY_CLIENT_HEADER_TIMEOUT": "10s",
        "STATEFULPROXY_CLIENT_BODY_TIMEOUT": "20s",
        "STATEFULPROXY_SEND_TIMEOUT": "90s",
        "STATEFULPROXY_MAX_HISTORY_MESSAGES": "40",
        "STATEFULPROXY_MAX_HISTORY_TOKENS": "8000",
        "STATEFULPROXY_MAX_SESSION_MESSAGES": "500",
        "STATEFULPROXY_MAX_SPLICE_BYTES": "4MiB",
        "STATEFULPROXY_MAX_SESSIONS_PER_OWNER": "0",
        "STATEFULPROXY_MEMORY_MAX_SESSIONS": "2000",
        "STATEFULPROXY_SCOPE_SECRET": "k" * 32,
        "STATEFULPROXY_REQUIRE_CREDENTIAL": "true",
        "STATEFULPROXY_UPSTREAM_API_KEY": "sk-upstream",
        "STATEFULPROXY_UPSTREAM_API_KEY_ENV": "OPENAI_API_KEY",
        "STATEFULPROXY_ON_BUSY": "reject",
        "STATEFULPROXY_BUSY_TIMEOUT": "5s",
        "STATEFULPROXY_LEASE_TTL": "10s",
        "STATEFULPROXY_ON_STORE_ERROR": "passthrough",
        "STATEFULPROXY_MAX_HEADERS": "50",
        "STATEFULPROXY_MAX_HEADER_BYTES": "8KiB",
        "STATEFULPROXY_STORE_TIMEOUT": "500ms",
        "STATEFULPROXY_IDEMPOTENCY_TTL": "1h",
        "STATEFULPROXY_LOG_LEVEL": "DEBUG",
        "STATEFULPROXY_LOG_FORMAT": "JSON",
        "STATEFULPROXY_ACCESS_LOG": "True",
        "STATEFULPROXY_SHUTDOWN_TIMEOUT": "45s",
        "STATEFULPROXY_METRICS_PORT": "9464",
        "STATEFULPROXY_UI": "off",
        "STATEFULPROXY_UI_PREFIX": "/browser",
        "STATEFULPROXY_CORS_ORIGINS": "https://App.example.com",
    }
    assert sorted(name.removeprefix("STATEFULPROXY_").lower() for name in env) == sorted(FIELDS)
    assert load_settings({}, env) == Settings(
        upstream="https://example.com/api",
        store="rediss://cache:6380/2",
        store_prefix="prod:eu",
        workers=4,
        host="0.0.0.0",
        port=9000,
        session_ttl=None,
        session_headers=("x-conversation", "x-session-id"),
        sessions_prefix="/api/sessions",
        health_prefix="/_",
        max_body_size=1024 * 1024,
        connect_timeout=2.5,
        read_timeout=None,
        upstream_max_connections=0,
        forward_store=True,
        replay_reasoning="reasoning_content",
        max_history_messages=40,
        max_history_tokens=8000,
        max_session_messages=500,
        max_splice_bytes=4 * 1024 * 1024,
        max_sessions_per_owner=0,
        memory_max_sessions=2000,
        profile="vllm",
        routes=(Route("/a", "https://api.anthropic.com", "anthropic"),),
        session_namespaces=(("document", "{doc}"), ("team", "{t}", "chat", "{c}")),
        simple_chat_prefix="/api/v1/chat",
        max_turn_duration=7200.0,
        client_header_timeout=10.0,
        client_body_timeout=20.0,
        send_timeout=90.0,
        scope_secret="k" * 32,
        require_credential=True,
        upstream_api_key="sk-upstream",
        upstream_api_key_env="OPENAI_API_KEY",
        on_busy="reject",
        busy_timeout=5.0,
        lease_ttl=10.0,
        on_store_error="passthrough",
        max_headers=50,
        max_header_bytes=8192,
        store_timeout=0.5,
        idempotency_ttl=3600.0,
        log_level="debug",
        log_format="json",
        access_log=True,
        shutdown_timeout=45.0,
        metrics_port=9464,
        ui=False,
        ui_prefix="/browser",
        cors_origins=("https://app.example.com",),
    )


def test_error_names_where_the_value_came_from(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port: 0\n")
    with pytest.raises(ConfigError, match=rf"^port: .*\(got 0 from config file {path}\)$"):
        load_settings({"config": path}, {})
    with pytest.raises(ConfigError, match=r"^port: .*\(got 'http' from STATEFULPROXY_PORT\)$"):
        load_settings({}, {"STATEFULPROXY_PORT": "http"})
    with pytest.raises(ConfigError, match=r"^log_level: .*\(got 'loud' from --log-level\)$"):
        load_settings({"log_level": "loud"}, {})


# --- value parsers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("2.5", 2.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("15m", 900.0),
        ("24h", 86400.0),
        ("1.5h", 5400.0),
        ("7d", 604800.0),
        (" 10 M ", 600.0),
        ("none", None),
        ("None", None),
        ("null", None),
        (None, None),
    ],
)
def test_durations(value: Any, seconds: float | None) -> None:
    assert parsed("session_ttl", value) == seconds
    assert parsed("read_timeout", value) == seconds


@pytest.mark.parametrize("value", [0, -1, "0s", "-5m", "abc", "10x", "1h30m", "", True, float("inf"), float("nan"), []])
def test_bad_durations(value: Any) -> None:
    assert config_error("session_ttl", value).startswith("session_ttl: must be a positive number of seconds")


@pytest.mark.parametrize("value", ["none", None])
def test_connect_timeout_cannot_be_none(value: Any) -> None:
    assert config_error("connect_timeout", value).startswith("connect_timeout: must be a positive number of seconds")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("100B", 100),
        ("512KiB", 512 * 1024),
        ("32MiB", 32 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("10MB", 10_000_000),
        ("2kb", 2000),
        ("1.5 MiB", 1572864),
        ("1GB", 10**9),
    ],
)
def test_sizes(value: Any, size: int) -> None:
    assert parsed("max_body_size", value) == size


@pytest.mark.parametrize("value", [0, -1, "0", "-1MiB", "10 parsecs", "MiB", 1.5, True, None])
def test_bad_sizes(value: Any) -> None:
    assert config_error("max_body_size", value).startswith("max_body_size: must be a positive number of bytes")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("Yes", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("0", False),
    ],
)
def test_booleans(value: Any, expected: bool) -> None:
    assert parsed("forward_store", value) is expected
    assert parsed("access_log", value) is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, None, 1.0])
def test_bad_booleans(value: Any) -> None:
    assert config_error("access_log", value).startswith("access_log: must be true or false (got ")


def test_yaml_native_values(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "session_ttl: null\nforward_store: yes\nsession_headers:\n  - X-A\n  - x-b\nport: 8443\nread_timeout: 1.5\n",
    )
    settings = load_settings({"config": path}, {})
    assert settings.session_ttl is None
    assert settings.forward_store is True
    assert settings.session_headers == ("x-a", "x-b")
    assert settings.port == 8443
    assert settings.read_timeout == 1.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://api.openai.com", "https://api.openai.com"),
        ("https://api.openai.com/", "https://api.openai.com"),
        ("https://openrouter.ai/api/", "https://openrouter.ai/api"),
        ("HTTP://localhost:11434", "http://localhost:11434"),
        ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ],
)
def test_upstream_normalised(value: str, expected: str) -> None:
    assert parsed("upstream", value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("api.openai.com", "must be an http:// or https:// URL"),
        ("ftp://example.com", "must be an http:// or https:// URL"),
        ("http://", "must name a host"),
        ("http:///path", "must name a host"),
        ("http://example.com/?key=1", "must not have a query string or fragment"),
        ("http://example.com?", "must not have a query string or fragment"),
        ("http://example.com/#top", "must not have a query string or fragment"),
        ("http://user:pw@example.com", "must not contain credentials"),
        ("http://example.com:99999", "is not a valid URL"),
        ("http://exa mple.com", "must be an http:// or https:// URL without spaces"),
        ("", "must be an http:// or https:// URL"),
        (8080, "must be a string"),
    ],
)
def test_bad_upstream(value: Any, problem: str) -> None:
    message = config_error("upstream", value)
    assert message.startswith(f"upstream: {problem}")


def test_upstream_error_does_not_echo_its_password() -> None:
    message = config_error("upstream", "http://user:hunter2@example.com")
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "value", ["memory://", "redis://localhost:6379/0", "rediss://user:pw@cache.example:6380/1", "REDIS://h"]
)
def test_store_schemes(value: str) -> None:
    assert parsed("store", value) == value


@pytest.mark.parametrize("value", ["bogus://x", "postgres://u:hunter2@db/x", "redis", "memory", "localhost:6379", ""])
def test_bad_store(value: str) -> None:
    message = config_error("store", value)
    assert message.startswith(
        "store: must be a memory://, redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL (got "
    )
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Session-ID", ("session-id",)),
        ("x-a, X-B ,x-a,", ("x-a", "x-b")),
        (["X-Conversation-Id"], ("x-conversation-id",)),
        (("a_b", "c.d"), ("a_b", "c.d")),
    ],
)
def test_session_headers(value: Any, expected: tuple[str, ...]) -> None:
    assert parsed("session_headers", value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must name at least one header"),
        (" , ", "must name at least one header"),
        ([], "must name at least one header"),
        ("bad header", "'bad header' is not a valid header name"),
        ("x-a,é", "'é' is not a valid header name"),
        ("Authorization", "'authorization' is a header the upstream needs"),
        ([1], "must be a string"),
        (5, "must be a list of header names"),
    ],
)
def test_bad_session_headers(value: Any, problem: str) -> None:
    assert config_error("session_headers", value).startswith(f"session_headers: {problem}")


def test_prefixes() -> None:
    assert parsed("sessions_prefix", "/api/v2/sessions") == "/api/v2/sessions"
    assert parsed("health_prefix", "") == ""
    assert parsed("health_prefix", "/internal") == "/internal"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("sessions_prefix", "", "must start with '/'"),
        ("sessions_prefix", "v1/sessions", "must start with '/'"),
        ("sessions_prefix", "/v1/sessions/", "must not end with '/'"),
        ("sessions_prefix", "/", "must not end with '/'"),
        ("sessions_prefix", "/v1//sessions", "must be a URL path"),
        ("sessions_prefix", "/v1/sess ions", "must be a URL path"),
        ("sessions_prefix", "/v1?x", "must be a URL path"),
        ("health_prefix", "health", "must start with '/' (or be empty)"),
        ("health_prefix", "/", "must not end with '/'"),
        ("health_prefix", None, "must be a string"),
    ],
)
def test_bad_prefixes(key: str, value: Any, problem: str) -> None:
    assert config_error(key, value).startswith(f"{key}: {problem}")


def test_choices_are_case_insensitive() -> None:
    assert parsed("log_level", " Warning ") == "warning"
    assert parsed("replay_reasoning", "REASONING") == "reasoning"


def test_metrics_port_is_optional_and_log_format_a_choice() -> None:
    assert parsed("metrics_port", None) is None
    assert parsed("metrics_port", "none") is None
    assert parsed("metrics_port", " 9464 ") == 9464
    assert parsed("log_format", " JSON ") == "json"
    assert parsed("shutdown_timeout", "2m") == 120.0


def test_cors_origins_are_normalised_as_browsers_send_them() -> None:
    assert parsed("cors_origins", "") == ()
    assert parsed("cors_origins", " https://App.Example.com:443 , http://127.0.0.1:8000,*") == (
        "https://app.example.com",
        "http://127.0.0.1:8000",
        "*",
    )
    assert parsed("cors_origins", ["http://[::1]:80", "http://[::1]"]) == ("http://[::1]",)


def test_scope_secret() -> None:
    assert parsed("scope_secret", None) is None
    assert parsed("scope_secret", "abc") == "abc"
    assert config_error("scope_secret", 12345) == "scope_secret: must be a string (got <hidden> from test)"
    assert config_error("scope_secret", "") == "scope_secret: must not be empty (got '' from test)"


BAD_VALUES = [
    ("upstream", "ftp://x", "must be an http:// or https:// URL"),
    (
        "store",
        "bogus://x",
        "must be a memory://, redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL",
    ),
    ("host", "", "must be a host name or IP address"),
    ("host", 127, "must be a string"),
    ("port", 0, "must be an integer from 1 to 65535"),
    ("port", 65536, "must be an integer from 1 to 65535"),
    ("port", "80.5", "must be an integer from 1 to 65535"),
    ("port", True, "must be an integer from 1 to 65535"),
    ("session_ttl", "soon", "must be a positive number of seconds"),
    ("session_headers", "", "must name at least one header"),
    ("sessions_prefix", "v1", "must start with '/'"),
    ("health_prefix", "/h/", "must not end with '/'"),
    ("max_body_size", "lots", "must be a positive number of bytes"),
    ("connect_timeout", 0, "must be a positive number of seconds"),
    ("read_timeout", -1, "must be a positive number of seconds"),
    ("upstream_max_connections", -1, "must be an integer of at least 0"),
    ("upstream_max_connections", "many", "must be an integer of at least 0"),
    ("forward_store", "perhaps", "must be true or false"),
    ("require_credential", "sometimes", "must be true or false"),
    ("store_prefix", "a b", "must be 1-64 characters of A-Z a-z 0-9 . _ : -"),
    ("workers", 0, "must be an integer from 1 to 64"),
    ("max_turn_duration", "0s", "must be a positive number of seconds"),
    ("send_timeout", "never", "must be a positive number of seconds"),
    ("client_header_timeout", "-1", "must be a positive number of seconds"),
    ("client_body_timeout", "", "must be a positive number of seconds"),
    ("replay_reasoning", "think", "must be one of 'auto', 'none', 'reasoning_content', 'reasoning'"),
    ("profile", "mistral", "must be one of 'openai', 'azure'"),
    ("routes", [{"prefix": "/a/", "upstream": "https://x"}], "routes[0].prefix must be ''"),
    ("session_namespaces", ["/document/d1"], "'/document/d1' names no {parameter}"),
    ("simple_chat_prefix", "api/chat", "must start with '/'"),
    ("max_history_messages", -1, "must be an integer of at least 0"),
    ("max_history_tokens", "lots", "must be an integer of at least 0"),
    ("max_session_messages", -5, "must be an integer of at least 0"),
    ("max_splice_bytes", "0", "must be a positive number of bytes"),
    ("max_sessions_per_owner", "many", "must be an integer of at least 0"),
    ("memory_max_sessions", 1.5, "must be an integer of at least 0"),
    ("scope_secret", "", "must not be empty"),
    ("upstream_api_key", "", "must not be empty"),
    ("upstream_api_key_env", "", "must not be empty"),
    ("on_busy", "queue", "must be one of"),
    ("busy_timeout", "soon", "must be"),
    ("lease_ttl", "none", "must be"),
    ("on_store_error", "ignore", "must be one of"),
    ("max_headers", "0", "must be an integer"),
    ("max_header_bytes", "lots", "must be"),
    ("store_timeout", "0", "must be"),
    ("idempotency_ttl", "none", "must be"),
    ("log_level", "trace", "must be one of 'critical', 'error', 'warning', 'info', 'debug'"),
    ("access_log", "loud", "must be true or false"),
    ("log_format", "xml", "must be one of 'text', 'json'"),
    ("shutdown_timeout", "0", "must be a positive number of seconds"),
    ("metrics_port", 0, "must be an integer from 1 to 65535"),
    ("metrics_port", "9090.5", "must be an integer from 1 to 65535"),
    ("ui", "maybe", "must be true or false"),
    ("ui_prefix", "/ui/", "must not end with '/'"),
    ("cors_origins", "https://app.example.com/path", "'https://app.example.com/path' is not an origin"),
    ("cors_origins", ["null"], "'null' is not an origin"),
    ("cors_origins", 5, "must be a list of origins"),
]


@pytest.mark.parametrize(("key", "value", "problem"), BAD_VALUES)
def test_every_bad_value_names_its_key(key: str, value: Any, problem: str) -> None:
    message = config_error(key, value)
    assert message.startswith(f"{key}: {problem}")
    assert re.search(r" \(got .+ from test\)$", message)
    assert "\n" not in message


def test_every_key_is_in_the_bad_value_table() -> None:
    assert {key for key, _, _ in BAD_VALUES} == set(FIELDS)


def test_long_values_are_shortened_in_messages() -> None:
    message = config_error("host", " " * 500)
    assert len(message) < 200
    assert message.endswith("... from test)")


# --- the config file --------------------------------------------------------


def test_unknown_yaml_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write_config(tmp_path, "upstream: http://x\nsesion_ttl: 1h\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"config": path}, {})
    assert str(info.value) == f"config file {path}: unknown key 'sesion_ttl' (did you mean 'session_ttl'?)"


def test_unknown_yaml_key_without_a_close_match(tmp_path: Path) -> None:
    path = write_config(tmp_path, "zzz: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"config": path}, {})
    assert str(info.value) == f"config file {path}: unknown key 'zzz'"


def test_config_key_is_not_a_yaml_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "config: other.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown key 'config'"):
        load_settings({"config": path}, {})


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port: 8080\nstore: [memory://\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"config": path}, {})
    message = str(info.value)
    assert message.startswith(f"config file {path}: invalid YAML at line ")
    assert "\n" not in message


def test_tab_indented_yaml_is_one_line_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port:\n\t8080\n")
    with pytest.raises(ConfigError, match=r"^config file .*: invalid YAML") as info:
        load_settings({"config": path}, {})
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_settings({}, {"STATEFULPROXY_CONFIG": path})
    assert str(info.value) == f"config file {path}: cannot read it (No such file or directory)"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^config file {tmp_path}: cannot read it \("):
        load_settings({"config": str(tmp_path)}, {})


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"host: caf\xe9\n")
    with pytest.raises(ConfigError, match=r": not UTF-8 text$"):
        load_settings({"config": str(path)}, {})


@pytest.mark.parametrize(("text", "kind"), [("- port: 1\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_config_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings({"config": path}, {})
    assert str(info.value) == f"config file {path}: the top level must be a mapping of keys to values (got a {kind})"


def test_empty_config_file_gives_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "# nothing set yet\n")
    assert load_settings({"config": path}, {}) == Settings()


# --- settings_from_mapping ----------------------------------------------------


def test_settings_from_mapping() -> None:
    settings = settings_from_mapping({"store": "redis://r:6379/0", "session_ttl": "15m"}, source="SessionMiddleware")
    assert settings == Settings(store="redis://r:6379/0", session_ttl=900.0)


def test_settings_from_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"stor": "memory://"}, source="SessionMiddleware")
    assert str(info.value) == "SessionMiddleware: unknown key 'stor' (did you mean 'store'?)"


def test_unknown_cli_key_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'bogus'$"):
        load_settings({"bogus": 1}, {})


def test_upstream_api_key_is_hidden_and_can_come_from_a_named_variable() -> None:
    from statefulproxy.settings import resolve_upstream_api_key

    settings = Settings(upstream_api_key="sk-secret")
    assert "sk-secret" not in repr(settings)
    assert resolve_upstream_api_key(settings, {}) == "sk-secret"
    named = Settings(upstream_api_key_env="MY_KEY")
    assert resolve_upstream_api_key(named, {"MY_KEY": "sk-from-env"}) == "sk-from-env"
    assert resolve_upstream_api_key(named, {}) is None
    assert resolve_upstream_api_key(Settings(), {"MY_KEY": "x"}) is None
