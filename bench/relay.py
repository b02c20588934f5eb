"""The reference hop: a minimal aiohttp relay (what any Python reverse proxy costs at the least).

Forwards method, path, headers and body bytes to the upstream through one shared ClientSession and
streams the response bytes back. Runs on uvloop when installed, like the proxy under uvicorn.

    python bench/relay.py --upstream http://127.0.0.1:8001 --port 8002
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}


def create_app(upstream: str) -> web.Application:
    client_key = web.AppKey("client", aiohttp.ClientSession)

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        app[client_key] = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[client_key].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED]
        async with request.app[client_key].request(
            request.method, upstream + request.path_qs, headers=headers, data=await request.read()
        ) as upstream_response:
            response = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason)
            for k, v in upstream_response.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(client_ctx)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    app = create_app(args.upstream.rstrip("/"))
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, backlog=1024, loop=loop)


if __name__ == "__main__":
    main()
