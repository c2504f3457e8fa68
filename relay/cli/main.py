"""Command line: ``relay serve``, ``relay check-config`` and the operator commands.

Argument parsing and output only; the work is done by the app and the admin client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from relay import __version__
from relay.cli.admin_parser import add_admin_commands
from relay.cli.storage import add_storage_commands
from relay.cli.store_lock import StoreLock, StoreLockError, acquire_store_lock
from relay.config import ConfigError, Settings, load_config
from relay.config.checks import parse_listen
from relay.obs.logs import flush_logs, setup_logging
from relay.server import heap
from relay.server.app import ADMIN_APP_KEY, FATAL_KEY, RELAY_KEY, config_reloader, create_app
from relay.server.listener import RelaySite, fd_reserve, raise_fd_limit, relay_runner
from relay.server.supervisor import Supervisor, watch_supervisor
from relay.store import StoreError
from relay.store.siblings import Siblings, SiblingsError

log = logging.getLogger("relay.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _load(path: str) -> Settings:
    return load_config(Path(path))


def _load_or_report(path: str) -> Settings | None:
    """The settings, or None after printing one line per problem to standard error."""
    try:
        return _load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        _print_warnings(exc.warnings)
        return None


def _print_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load_or_report(args.config)
    if settings is None:
        return EXIT_CONFIG
    # Warnings do not fail the check: the config is valid, if most likely not as meant.
    _print_warnings(settings.warnings)
    print(f"{args.config}: ok: {settings.summary()}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load_or_report(args.config)
    if settings is None:
        return EXIT_CONFIG
    # From here on every line, a fatal one included, is in the configured log format.
    setup_logging(settings.server.log_format)
    for warning in settings.warnings:
        log.warning("config: %s", warning)
    try:
        # Set by a supervisor for each of its workers; None in a relay started by hand.
        siblings = Siblings.from_env(os.environ)
        lock = acquire_store_lock(settings.storage)
    except (SiblingsError, StoreLockError) as exc:
        return _fatal(str(exc))
    if siblings is None and settings.server.workers > 1:
        return _supervise(settings, Path(args.config), lock)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return int(runner(_serve(settings, Path(args.config), siblings)))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if lock is not None:
            lock.release()


def _supervise(settings: Settings, config: Path, lock: StoreLock | None) -> int:
    """``[server] workers`` > 1: this process starts and watches the workers, serving nothing."""

    def announce() -> None:
        print(_listening(settings), flush=True)

    env, fds = (lock.child_env(), (lock.fd,)) if lock is not None else ({}, ())
    try:
        return asyncio.run(Supervisor(settings, config, env, fds).run(announce))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if lock is not None:
            lock.release()


def _listening(settings: Settings) -> str:
    operators = (
        f", console on http://{settings.admin.listen[0]}:{settings.admin.listen[1]}/console"
        if settings.admin.listen is not None
        else ""
    )
    return (
        f"relay {__version__} listening on http://{settings.server.host}:{settings.server.port}"
        f"{operators} ({settings.summary()})"
    )


def _fatal(message: str) -> int:
    """Log why relay cannot start, as one line in the configured format, and fail."""
    log.critical("%s", message)
    flush_logs()
    return EXIT_FAILURE


async def _serve(settings: Settings, config_path: Path, siblings: Siblings | None) -> int:
    app = create_app(settings, siblings=siblings)
    loop = asyncio.get_running_loop()
    reloader = config_reloader(app, config_path)
    # From the start: unhandled, SIGHUP would end the process (systemctl reload during startup).
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    # Each client connection holds a descriptor: ask for enough, and fit max_connections to
    # what the service manager allows, so relay refuses connections before accept() fails.
    reserve = fd_reserve(settings)
    raise_fd_limit(settings.server.max_connections + reserve)
    gate = app[RELAY_KEY].gate
    gate.fit_to_fd_limit(reserve)
    runner = relay_runner(app, settings.server)
    try:
        await runner.setup()
    except StoreError as exc:
        return _fatal(f"cannot start: {exc}")
    served = [(runner, settings.server.host, settings.server.port)]
    admin = app.get(ADMIN_APP_KEY)
    if admin is not None and settings.admin.listen is not None:
        # Set up after the main app, whose startup opens storage and starts the workers.
        admin_runner = relay_runner(admin, settings.server)
        await admin_runner.setup()
        served.append((admin_runner, *settings.admin.listen))
    for r, host, port in served:
        try:
            # Both addresses share one gate: their connections take descriptors from one limit.
            await RelaySite(r, host, port, gate, reuse_port=siblings is not None).start()
        except OSError as exc:
            # asyncio's strerror repeats the address; the errno's own text is the reason.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            code = _fatal(f"cannot listen on {host}:{port}: {reason}")
            for started, _, _ in reversed(served):
                await started.cleanup()
            flush_logs()
            return code
    # Only now, with the ports bound, has relay started.
    if siblings is None:
        log.info("relay started: %s", settings.summary())
        print(_listening(settings), flush=True)  # a supervisor says it once for its workers
    else:
        log.info("worker %d of %d started", siblings.index, siblings.count)
    reloader.serving()
    # Startup's objects are all made now: collections need not walk them again.
    heap.settle()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A worker whose supervisor died (kill -9, OOM) drains and exits instead of serving on alone.
    watch_supervisor(os.environ, stop.set)
    fatal = app[FATAL_KEY]
    stop_task: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
    watched: set[asyncio.Future[object]] = {stop_task, fatal}  # type: ignore[arg-type]
    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    code = EXIT_OK
    if fatal.done():
        log.critical("stopping: a background task failed: %r", fatal.exception())
        code = EXIT_FAILURE
    loop.remove_signal_handler(signal.SIGHUP)
    await reloader.stop()
    log.info("shutting down: no new connections, finishing acknowledged work")
    # The operator address closes first; then the main one stops listening, lets in-flight
    # requests finish their commits, and runs the cleanup that stops workers (with their grace
    # period) and closes storage.
    for r, _, _ in reversed(served):
        await r.cleanup()
    with contextlib.suppress(asyncio.CancelledError):
        await stop_task
    flush_logs()
    return code


def cmd_sink(args: argparse.Namespace) -> int:
    from relay.cli.devsink import create_sink

    listen = parse_listen(args.listen)
    if listen is None:
        print(f"relay: --listen must be host:port, not {args.listen!r}", file=sys.stderr)
        return EXIT_CONFIG
    host, port = listen
    print(f"relay sink listening on http://{host}:{port}, printing what arrives", flush=True)
    try:
        web.run_app(
            create_sink(status=args.status), host=host, port=port, print=None,
            access_log=None,
        )  # fmt: skip
    except OSError as exc:
        print(f"relay: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Webhook relay and replay proxy for Mailchimp.",
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the proxy until SIGTERM or SIGINT",
        description="Run the proxy until SIGTERM or SIGINT (Ctrl-C), then shut down gracefully."
        " SIGHUP reloads the config file (inbounds, destinations, the admin token, retention)"
        " without dropping a request; a file that does not validate, or that changes [server],"
        " [storage] or [dedup], is refused with a log line per problem and the running"
        ' configuration kept. With [server] workers = N (or "auto", one per core) this process'
        " supervises N worker processes sharing the listen address (SO_REUSEPORT): it restarts"
        " one that dies, passes SIGTERM/SIGINT on and waits for every worker to drain, and"
        " checks the config file on SIGHUP before passing it on. One relay serve per SQLite"
        " file (its workers share it): a second one on the same file exits with status 1.",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a configuration file: exit 0 with a one-line summary, or exit 2"
        " with one line per problem naming its key. Warnings (valid, but most likely not meant)"
        " are printed on stderr and do not fail the check.",
    )
    check.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    check.set_defaults(func=cmd_check_config)

    sink = sub.add_parser(
        "sink", help="development helper: a destination that prints every webhook it receives"
    )
    sink.add_argument("--listen", default="127.0.0.1:9000", metavar="HOST:PORT")
    sink.add_argument("--status", type=int, default=200, help="status code to answer with")
    sink.set_defaults(func=cmd_sink)

    add_admin_commands(sub)
    add_storage_commands(sub, _load_or_report)
    return parser


# What a shell reports for a process killed by SIGPIPE, as `yes | head -1` does.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        # Flushed here, where a closed pipe can be handled, not at exit, where Python prints it.
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`relay events list | head -1`): stop quietly, and point stdout
        # at /dev/null so the interpreter's own final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code
