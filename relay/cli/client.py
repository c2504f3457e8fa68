"""A small client for a running relay's admin API, for the operator commands of the CLI.

    async with AdminClient("http://127.0.0.1:8080", token) as admin:
        page = await admin.get("/admin/events", {"type": "unsubscribe"})

Every failure becomes an AdminError whose message is the one line the CLI prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from relay.config import redact_url
from relay.delivery.sender import connect_reason

DEFAULT_TIMEOUT = 60.0


class AdminError(Exception):
    """The admin API could not be used; ``str()`` is a one-line reason for the operator.

    ``status`` is the HTTP status when the API answered (400: the request as given was wrong).
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class AdminClient:
    def __init__(
        self,
        url: str,
        token: str,
        operator: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self.shown = redact_url(self.url)
        self._headers = {"Authorization": f"Bearer {token}"}
        if operator:
            self._headers["X-Relay-Operator"] = operator
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.request("POST", path, body=body)

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> tuple[int, Any]:
        """The status and decoded JSON of a successful (2xx) answer; AdminError otherwise."""
        assert self._session is not None, "use AdminClient as an async context manager"
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                method, self.url + path, params=params, data=data, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            raise AdminError(f"cannot reach {self.shown}: {connect_reason(exc).lower()}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminError(f"cannot reach {self.shown}: {exc or type(exc).__name__}") from None
        try:
            decoded = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            decoded = None
        if status == 401:
            detail = _reason(decoded)
            raise AdminError(
                "admin API refused the token (401)" + (f": {detail}" if detail else ""), status
            )
        if status >= 400:
            raise AdminError(_reason(decoded) or f"{method} {path}: HTTP {status}", status)
        if decoded is None:
            raise AdminError(f"{method} {path}: the answer was not JSON (is {self.shown} a relay?)")
        return status, decoded


def _reason(decoded: Any) -> str | None:
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return str(decoded["error"])
    return None
