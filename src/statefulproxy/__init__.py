"""statefulproxy: server-side conversation sessions for any stateless LLM API."""

from .app import ProxyApp, create_app
from .asgi.middleware import SessionMiddleware
from .errors import ClientError, ConfigError, StatefulProxyError, StoreError, UpstreamError, UpstreamTimeout
from .settings import Settings, load_settings, settings_from_mapping

__version__ = "0.1.0"

__all__ = [
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
