"""The ceiling: an aiohttp server that reads the whole body and answers 200.

It does what any ingest endpoint must do at the least (accept the connection, parse the
request, read the body) and nothing else, so the gap between it and relay is relay's own work.

    python bench/servers/bare.py --port 18070 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


async def ingest(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


async def ready(_: web.Request) -> web.Response:
    return web.Response(text="ready")


def build_app() -> web.Application:
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_get("/readyz", ready)
    app.router.add_route("*", "/{tail:.*}", ingest)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18070)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (only if relay does)")
    args = parser.parse_args()
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    # access_log=None: relay does not log every request either, and logging would dominate.
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port))


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"bare: listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
