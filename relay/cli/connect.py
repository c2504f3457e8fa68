"""How the operator commands reach a running relay: its address, the admin token, who asks,
and the wrapper that turns failures into one line and an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from relay.cli.client import AdminClient, AdminError
from relay.config import redact_url
from relay.config.checks import parse_listen

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "RELAY_ADMIN_TOKEN"

Command = Callable[[AdminClient, argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """The command line cannot work as given; exit 2 with this line."""


def admin_url(args: argparse.Namespace) -> str:
    if args.url:
        return _checked_url(str(args.url))
    if args.config:
        # Only the listen address is needed: no ${VAR} expansion, so secrets need not be set.
        try:
            raw = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read {args.config}: {exc}") from None
        # The admin API is on [admin] listen when that is set, else on [server] listen.
        admin, server = raw.get("admin", {}), raw.get("server", {})
        for name, table in (("server", server), ("admin", admin)):
            if not isinstance(table, dict):
                raise UsageError(f"{args.config}: {name} must be a table")
        key = "admin.listen" if "listen" in admin else "server.listen"
        listen = str(admin.get("listen", server.get("listen", "127.0.0.1:8080")))
        parsed = parse_listen(listen)
        if parsed is None:
            raise UsageError(f"{args.config}: {key} must be host:port, not {listen!r}")
        host, port = parsed
        if host in ("0.0.0.0", "::"):  # listening everywhere: talk to it on this machine
            host = "127.0.0.1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return DEFAULT_URL


def _checked_url(url: str) -> str:
    shown = redact_url(url)
    if "://" not in url:
        raise UsageError(f"--url needs a scheme: http://{shown}, not {shown!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError as exc:
        raise UsageError(f"--url {shown!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url must be http://HOST:PORT or https://HOST:PORT, not {shown!r}")
    if "@" in parts.netloc:
        # aiohttp refuses them beside the Authorization header, and the token is that header.
        raise UsageError(
            f"--url must not carry credentials ({shown}): the admin token is read from"
            f" {TOKEN_ENV} or --token-file"
        )
    return url


def admin_token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            text = Path(args.token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read token file {args.token_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"token file {args.token_file} is not UTF-8 text") from None
        token = token_from_file(text)
        if not token:
            raise UsageError(
                f"token file {args.token_file} holds neither a token nor a {TOKEN_ENV}= line"
            )
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"no admin token: set {TOKEN_ENV} or pass --token-file")
    return token


_ENV_LINE = re.compile(rf"\s*(?:export\s+)?{TOKEN_ENV}\s*=\s*(.*?)\s*")


def token_from_file(text: str) -> str | None:
    """The token in a file that holds just the token, or in an environment file.

    The environment file is the one the systemd unit and docker compose read (``NAME=value``
    lines, ``#`` comments, optional quotes), so one file serves relay and the operator. A bare
    token may itself contain "=" (base64 padding), so a file is read as an environment file
    only when it has a ``RELAY_ADMIN_TOKEN=`` line; otherwise its one line is the token.

    >>> token_from_file("MC_HOOK_SECRET=x\\nRELAY_ADMIN_TOKEN='s3cret'\\n")
    's3cret'
    >>> token_from_file("dGVzdA==\\n")
    'dGVzdA=='
    """
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", ";"))
    ]
    for line in lines:
        match = _ENV_LINE.fullmatch(line)
        if match:
            value = match.group(1)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value or None
    if len(lines) == 1:
        return lines[0]
    return None


def operator_name(args: argparse.Namespace) -> str:
    if args.operator:
        return str(args.operator)
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def run(command: Command) -> Callable[[argparse.Namespace], int]:
    """Wrap an async command: build the client, run it, turn failures into one line."""

    def main(args: argparse.Namespace) -> int:
        try:
            url, token = admin_url(args), admin_token(args)
        except UsageError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return EXIT_USAGE

        async def go() -> int:
            async with AdminClient(url, token, operator_name(args)) as client:
                return await command(client, args)

        try:
            return asyncio.run(go())
        except AdminError as exc:
            if exc.status == 400:
                # The API refused what the command line asked for: a usage problem.
                print(f"relay: {_as_option(str(exc), args)}", file=sys.stderr)
                return EXIT_USAGE
            print(f"relay: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except UsageError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("relay: interrupted", file=sys.stderr)
            return EXIT_FAILURE

    return main


def _as_option(reason: str, args: argparse.Namespace) -> str:
    """The API names a key (``since: ...``); say it as the option that set it (``--since: ...``)."""
    key, sep, rest = reason.partition(": ")
    if sep and key.isidentifier() and getattr(args, key, None) is not None:
        return f"--{key.replace('_', '-')}: {rest}"
    return reason
