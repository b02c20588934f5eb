"""A web page that chats on a statefulproxy session through the embeddable widget.

The page's own backend holds the API key. For each visitor it creates a session with a short-lived
client secret (``POST /v1/sessions`` with ``client_secret``) and gives the page only that secret,
which ``<statefulproxy-chat>`` then uses to chat on that one session, straight with the proxy.

Run a proxy that knows the upstream key (client secrets chat on it) and allows this page's origin:

    STATEFULPROXY_UPSTREAM_API_KEY=sk-... STATEFULPROXY_CORS_ORIGINS=http://127.0.0.1:8000 \\
        statefulproxy --upstream https://api.openai.com

then this page (``pip install starlette uvicorn httpx``):

    STATEFULPROXY_URL=http://127.0.0.1:8080 STATEFULPROXY_API_KEY=sk-... STATEFULPROXY_MODEL=gpt-4o-mini \\
        python examples/widget/app.py

and open http://127.0.0.1:8000. The sessions it makes show in the proxy's /ui under the same key.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

HERE = Path(__file__).resolve().parent


def create_app(proxy_url: str, api_key: str, model: str | None = None) -> Starlette:
    proxy_url = proxy_url.rstrip("/")
    # the page may load scripts from, and talk to, itself and the proxy: nothing inline, nothing else
    policy = (
        f"default-src 'self'; script-src 'self' {proxy_url}; connect-src 'self' {proxy_url}; "
        "style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    )

    async def page(request: Request) -> Response:
        return FileResponse(HERE / "index.html", headers={"content-security-policy": policy})

    async def chat_session(request: Request) -> JSONResponse:
        """A new session for this visitor, and a secret that may only chat on it, for 10 minutes."""
        secret: dict[str, object] = {"expires_after": 600}
        if model:
            secret["model"] = model  # pinned: the browser cannot pick another (or a pricier) one
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.post(
                f"{proxy_url}/v1/sessions",
                headers={"authorization": f"Bearer {api_key}"},
                json={"title": "Website visitor", "metadata": {"source": "widget-example"}, "client_secret": secret},
            )
        if reply.status_code != 201:
            return JSONResponse({"error": "The chat is unavailable right now."}, status_code=502)
        session = reply.json()
        return JSONResponse(
            {"proxy": proxy_url, "session_id": session["id"], "client_secret": session["client_secret"]["value"]},
            headers={"cache-control": "no-store"},
        )

    return Starlette(
        routes=[
            Route("/", page),
            Route("/page.js", lambda request: FileResponse(HERE / "page.js")),
            Route("/page.css", lambda request: FileResponse(HERE / "page.css")),
            Route("/chat-session", chat_session, methods=["POST"]),
        ]
    )


if __name__ == "__main__":
    import uvicorn

    app = create_app(
        os.environ.get("STATEFULPROXY_URL", "http://127.0.0.1:8080"),
        os.environ["STATEFULPROXY_API_KEY"],
        os.environ.get("STATEFULPROXY_MODEL"),
    )
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
