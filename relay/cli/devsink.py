"""A development sink: an HTTP server that prints every webhook relay forwards to it.

relay sink --listen 127.0.0.1:9000
"""

from __future__ import annotations

import sys
from typing import TextIO

from aiohttp import web


def create_sink(out: TextIO = sys.stdout, status: int = 200) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        relay_headers = " ".join(
            f"{k.removeprefix('X-Relay-')}={v}"
            for k, v in request.headers.items()
            if k.startswith("X-Relay-")
        )
        print(f"{request.method} {request.path_qs} {len(body)} bytes {relay_headers}", file=out)
        print("  " + body[:2000].decode("utf-8", "replace"), file=out, flush=True)
        return web.Response(status=status, text="received\n")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app
