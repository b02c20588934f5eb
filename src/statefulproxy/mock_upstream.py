"""``--upstream mock://``: a built-in scripted upstream, for trying the proxy with no provider and no key.

The proxy starts it in its lifespan, an aiohttp server on ``127.0.0.1`` and a free port, and points
every route whose upstream is ``mock://`` at it: requests reach it through the upstream client like
any upstream's, so the proxy's path is the same one it takes in front of a provider. What it
answers is in mock_replies.py.
"""

from __future__ import annotations

import dataclasses
import logging

from aiohttp import web

from .mock_replies import MockReply, answer, dialect_of, error_reply, models_reply
from .routes import Route
from .settings_values import MOCK_UPSTREAM

logger = logging.getLogger("statefulproxy")

__all__ = ["MOCK_UPSTREAM", "MockUpstream", "uses_mock"]

_NOT_SERVED = (
    "The mock upstream answers chat requests only (POST .../chat/completions, .../v1/messages, .../api/chat, "
    "...:generateContent, ...:streamGenerateContent) and GET .../models."
)


def uses_mock(routes: tuple[Route, ...]) -> bool:
    """Whether any route's upstream is ``mock://``."""
    return any(route.upstream == MOCK_UPSTREAM for route in routes)


class MockUpstream:
    """The mock upstream's server: started by ``start``, stopped by ``aclose``."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None

    async def start(self, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        """Serve on a free loopback port; ``routes`` with their ``mock://`` upstreams pointed at it."""
        if self._runner is None:
            app = web.Application(client_max_size=0)  # no limit of its own: the proxy bounds what it forwards
            app.router.add_route("*", "/{path:.*}", _handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", 0).start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
            logger.info("mock upstream serving on %s", self.url)
        url = self.url
        return tuple(
            dataclasses.replace(route, upstream=url) if route.upstream == MOCK_UPSTREAM else route for route in routes
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, once started."""
        if self._runner is None:
            raise RuntimeError("the mock upstream is not started")
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def _handle(request: web.Request) -> web.StreamResponse:
    dialect = dialect_of(request.path)
    if request.method == "GET" and request.path.endswith("/models"):
        reply = models_reply()
    elif request.method != "POST" or dialect is None:
        reply = error_reply(dialect, 404, _NOT_SERVED)
    else:
        reply = answer(dialect, request.path, request.query_string, await request.read())
    if not reply.streamed:
        return web.Response(status=reply.status, body=b"".join(reply.frames), headers=_headers(reply))
    response = web.StreamResponse(status=reply.status, headers=_headers(reply))
    try:
        await response.prepare(request)
        for frame in reply.frames:
            await response.write(frame)
        await response.write_eof()
    except ConnectionError:  # the proxy went away mid-stream (its client did): nobody to answer
        pass
    return response


def _headers(reply: MockReply) -> dict[str, str]:
    return {"content-type": reply.content_type, "server": "statefulproxy-mock"}
