"""The one seam for outbound HTTP: POST a delivery, turn whatever happens into an AttemptResult."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping

import aiohttp

from relay import __version__
from relay.config import redact_url
from relay.model import AttemptOutcome, AttemptResult
from relay.pipeline.backoff import outcome_for_status, parse_retry_after

RESPONSE_HEAD_BYTES = 1024
# A response body is drained up to this size so the connection can be reused; a larger one
# closes the connection instead of reading a hostile endless body.
_DRAIN_LIMIT = 64 * 1024
USER_AGENT = f"relay/{__version__}"


class Sender:
    """Owns the shared ClientSession; ``send`` never raises for network or HTTP failures."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # limit=0: per-destination concurrency is enforced by the workers, and a global
        # connection cap would let one slow destination starve the others.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, enable_cleanup_closed=True)
        # No skip_auto_headers: every attempt sets its own Content-Type, and a session with
        # headers to skip copies and merges each request's headers once more (1.4 us).
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], time_limit: float
    ) -> AttemptResult:
        assert self._session is not None, "Sender.start() was not awaited"
        started_at = time.time()
        t0 = time.perf_counter()
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=time_limit),
                # A redirect is reported, not followed: following would turn the POST into a GET
                # or send the body somewhere the operator did not configure.
                allow_redirects=False,
            ) as response:
                # read(n) returns whatever has arrived, which from a slow server is one byte.
                head = b""
                while len(head) < RESPONSE_HEAD_BYTES:
                    piece = await response.content.read(RESPONSE_HEAD_BYTES - len(head))
                    if not piece:
                        break
                    head += piece
                drained = len(head)
                while not response.content.at_eof() and drained < _DRAIN_LIMIT:
                    chunk = await response.content.readany()
                    if not chunk:
                        break
                    drained += len(chunk)
                if not response.content.at_eof():
                    response.close()
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        except TimeoutError:
            return AttemptResult(
                outcome=AttemptOutcome.TIMEOUT,
                started_at=started_at,
                duration=time.perf_counter() - t0,
                error=f"timed out after {time_limit:g}s",
            )
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return AttemptResult(
                outcome=AttemptOutcome.CONNECTION_ERROR,
                started_at=started_at,
                duration=time.perf_counter() - t0,
                error=describe_error(exc),
            )
        return AttemptResult(
            outcome=outcome_for_status(status),
            started_at=started_at,
            duration=time.perf_counter() - t0,
            status=status,
            response_head=head,
            retry_after=retry_after,
        )


def connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection could not be made: "Connection refused", "Name or service not known"."""
    err = exc.os_error
    # asyncio words a refused connection "Connect call failed (host, port)"; errno says why.
    # A resolver failure carries a negative getaddrinfo code, which os.strerror does not know.
    reason = os.strerror(err.errno) if err.errno and err.errno > 0 else err.strerror
    return str(reason or err)


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed connection, without the URL's credentials or a traceback."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {connect_reason(exc)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body broken off"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "response broken off"
    if isinstance(exc, aiohttp.ClientResponseError):
        # Its str() ends with url='...', and a destination URL may carry a token in its query.
        return f"invalid response: {' '.join(exc.message.split())}"[:300]
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    # Any other error: a URL it quotes is masked like everywhere else.
    text = _URL.sub(lambda m: redact_url(m.group()), str(exc)) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
