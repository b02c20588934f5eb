"""The package's shape: the public API, and layers that import only from below (STYLE.md 5, 6)."""

from __future__ import annotations

import ast
from pathlib import Path

import statefulproxy

PACKAGE = Path(statefulproxy.__file__).parent

LAYERS = {
    # pure logic
    "errors": 0, "types": 0, "settings_values": 0, "settings": 2,
    "dialects.sse": 0, "dialects.ndjson": 0, "dialects.base": 1,
    "dialects.openai_stream": 2, "dialects.openai_recorder": 3, "dialects.openai": 4,
    "dialects.anthropic_stream": 2, "dialects.anthropic": 3, "dialects.ollama_stream": 2, "dialects.ollama": 3,
    "dialects.gemini_stream": 2, "dialects.gemini": 3, "dialects": 5,
    "stores.base": 0, "stores.resp": 0, "stores.redis_scripts": 0, "stores.memory_session": 1, "stores.redis_codec": 1,
    "stores.resp_types": -1,
    "stores.redis_manage_scripts": 0,
    "stores.redis_address": 1, "stores.redis_topology": 1, "stores.cluster": 2, "stores.sentinel": 2,
    "stores.limits": 1, "stores.redis_history": 1, "stores.redis_load": 2, "stores.redis_index": 2,
    "stores.redis_secret": 2,
    "stores.memory_restore": 2, "stores.redis_restore": 2, "mock_replies": 0, "progress": 0,
    "sessions": 1, "sessions.window": 0, "sessions.messages": 2, "sessions.identity": 2, "sessions.splice": 3,
    "sessions.idempotency": 3, "sessions.turn_writes": 4, "sessions.retries": 4,
    # adapters
    "stores": 4, "stores.memory": 3, "stores.redis": 3, "upstream": 3, "sessions.leases": 5, "sessions.service": 6,
    "mock_upstream": 3, "backup": 4, "metrics": 0, "stores.metered": 1, "logs": 3, "shutdown": 3,
    # ASGI
    "asgi": 1, "asgi.guards": 1, "asgi.request_body": 2, "asgi.pins": 0, "asgi.api_models": 3, "asgi.openapi": 6,
    "asgi.api_codec": 1, "asgi.api_types": 4, "asgi.routes_table": 5, "asgi.session_listing": 4,
    "asgi.replies": 5, "asgi.tap": 6, "asgi.draining": 0, "asgi.exchange": 1, "asgi.observe": 4,
    "asgi.cors": 6, "asgi.ui": 6,
    "asgi.passthrough": 6, "asgi.chat": 7, "asgi.management": 7, "asgi.simple_chat": 8, "asgi.middleware": 9,
    # composition
    "routes": 1, "app": 10, "server": 11, "admin": 11, "cli": 12, "__main__": 13, "__init__": 13,
}  # fmt: skip

# third-party modules each owned by one module of ours
OWNERS = {
    "redis": {"stores.redis", "stores.redis_address", "stores.cluster"},
    "yaml": {"settings"},
    "aiohttp": {"upstream", "mock_upstream"},
    "uvicorn": {"server"},
    "prometheus_client": {"metrics"},
    "msgspec": {"asgi.api_codec", "asgi.api_models", "asgi.api_types"},  # the management API's models
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(our modules, third-party top-level packages) that ``path`` imports."""
    ours: set[str] = set()
    others: set[str] = set()
    package_parts = module_name(path).split(".")[:-1] if path.name != "__init__.py" else module_name(path).split(".")
    if module_name(path) == "__init__":
        package_parts = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module is None:
                ours.update(".".join([*base, alias.name]) for alias in node.names)
            else:
                ours.add(target)
        elif isinstance(node, ast.ImportFrom) and node.module:
            others.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            others.update(alias.name.split(".")[0] for alias in node.names)
    return ours, others


def test_public_api_is_pinned() -> None:
    assert sorted(statefulproxy.__all__) == [
        "ClientError",
        "ConfigError",
        "ProxyApp",
        "SessionMiddleware",
        "Settings",
        "StatefulProxyError",
        "StoreError",
        "UpstreamError",
        "UpstreamTimeout",
        "__version__",
        "create_app",
        "load_settings",
        "settings_from_mapping",
    ]
    for name in statefulproxy.__all__:
        assert hasattr(statefulproxy, name)


def test_every_module_has_a_layer() -> None:
    assert {module_name(path) for path in PACKAGE.rglob("*.py")} == set(LAYERS)


def test_layers_import_only_from_below_and_libraries_have_one_owner() -> None:
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        ours, others = imports(path)
        for imported in ours:
            assert LAYERS[imported] < LAYERS[name], f"{name} imports {imported} from its own layer or above"
        for library, owners in OWNERS.items():
            assert library not in others or name in owners, f"{name} imports {library}; only {owners} may"


def test_no_module_is_oversized() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name
