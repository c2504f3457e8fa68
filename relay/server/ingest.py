"""aiohttp handlers for inbound URLs: authenticate, bound the body, store durably, then answer 200.

Nothing is acknowledged before it is committed: a storage failure answers 503, which Mailchimp
retries. Forwarding is never on this path, so the answer comes in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import Counter, Histogram

from relay.config import InboundConfig, Settings
from relay.ids import new_id
from relay.model import InboundKind, NewEvent, RawRequest
from relay.obs.logs import HotLog
from relay.obs.metrics import Metrics
from relay.pipeline.events import derive_events
from relay.protocols import mailchimp
from relay.server.auth import check_credentials, mask_headers, mask_query
from relay.server.body import (
    BodyIncompleteError,
    BodyTooLargeError,
    Held,
    InflightBudget,
    OverBudgetError,
    read_body,
)
from relay.server.quotas import Quotas
from relay.store import Store, StoreError

log = logging.getLogger("relay.ingest")
hot_log = HotLog("relay.ingest")

MANDRILL_TEST_KEY = "test-webhook"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Parsing megabytes of form fields takes seconds of CPU; bodies larger than this are parsed in a
# thread so that other requests keep their millisecond answers meanwhile.
PARSE_INLINE_BYTES = 256 * 1024
# Bodies in progress clear in seconds; Mailchimp retries on its own schedule whatever this says.
RETRY_AFTER_SECONDS = 5


def _storable(text: str) -> str:
    """Text with undecodable bytes (lone surrogates from aiohttp) replaced, so it can be stored."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _text(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n")


def _payload_problem(exc: BaseException) -> str:
    """What broke a body's stream, in words: aiohttp's error for it, or its cause's."""
    if isinstance(exc, ConnectionError):
        return "client closed the connection"
    cause = exc.__cause__ or exc
    return " ".join(str(cause).split())[:200] or type(cause).__name__


class Ingest:
    """The inbound endpoints of one relay: one route per configured inbound path."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        budget: InflightBudget,
        quotas: Quotas,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.budget = budget
        self.quotas = quotas
        self._parse_lock = asyncio.Lock()
        self._hot = self._series(settings)

    def _series(self, settings: Settings) -> dict[str, tuple[Counter, Histogram]]:
        # labels() costs a few microseconds a call; the per-request series are looked up once.
        return {
            i.name: (
                self.metrics.requests.labels(i.name, "accepted"),
                self.metrics.ingest_duration.labels(i.name),
            )
            for i in settings.inbounds
        }

    def apply(self, settings: Settings) -> None:
        """Use a reloaded configuration from the next request on (one already running keeps
        the inbound it was routed to)."""
        self._hot = self._series(settings)
        self.settings = settings

    def routes(self) -> list[web.RouteDef]:
        out = []
        for inbound in self.settings.inbounds:
            out += [
                web.get(inbound.path, self._validation, allow_head=True),
                web.post(inbound.path, self._post_handler(inbound)),
            ]
        return out

    async def _validation(self, request: web.Request) -> web.Response:
        # Mailchimp checks a webhook URL with GET (Mandrill with HEAD) and wants a 200.
        return _text(200, "OK")

    def _post_handler(self, inbound: InboundConfig) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.receive(inbound, request)

        return handler

    def _reject(
        self, inbound: InboundConfig, outcome: str, status: int, reason: str, request: web.Request
    ) -> web.Response:
        self.metrics.requests.labels(inbound.name, outcome).inc()
        log.warning(
            "request inbound=%s outcome=%s status=%d peer=%s reason=%r",
            inbound.name,
            outcome,
            status,
            request.remote,
            reason,
        )
        return _text(status, reason)

    async def receive(self, inbound: InboundConfig, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        received_at = time.time()
        if not request.can_read_body:
            # An empty POST is one of Mailchimp's URL checks: nothing to store, nothing to guard.
            self.metrics.requests.labels(inbound.name, "validation").inc()
            return _text(200, "OK")
        if not check_credentials(
            inbound, request.query.get("secret"), request.headers.get("Authorization")
        ):
            return self._reject(inbound, "rejected_auth", 401, "invalid or missing secret", request)
        if self.quotas.over(inbound):
            # Said before the body is read: it would not be stored. Other inbounds go on.
            response = self._reject(
                inbound, "over_quota", 503,
                f"inbound {inbound.name} has used its storage quota, retry later", request,
            )  # fmt: skip
            response.force_close()
            return response
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # aiohttp would decompress it, and the stored bytes would no longer be those sent;
            # Mailchimp does not compress webhooks.
            unsupported = "Content-Encoding not accepted: send the body uncompressed"
            response = self._reject(inbound, "unsupported", 415, unsupported, request)
            # aiohttp may already have failed to decompress it; the body is not read, and the
            # connection is not kept for a next request behind it.
            response.force_close()
            return response
        limit = inbound.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            return self._reject(
                inbound, "too_large", 413, f"body larger than {limit} bytes", request
            )
        with self.budget.hold() as held:
            if length is not None and not held.take(length):
                return self._overloaded(inbound, request)
            body = await self._read(inbound, request, held)
            if isinstance(body, web.Response):
                return body
            # The body's bytes stay counted until it is stored: that is when relay lets go.
            return await self._store(inbound, request, body, t0, received_at)

    def _overloaded(self, inbound: InboundConfig, request: web.Request) -> web.Response:
        budget = self.settings.server.max_inflight_bytes
        response = self._reject(
            inbound, "overloaded", 503,
            f"busy: {budget} bytes of request bodies in progress, retry later", request,
        )  # fmt: skip
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        # The body is not wanted: closing spares reading and discarding it.
        response.force_close()
        return response

    async def _read(
        self, inbound: InboundConfig, request: web.Request, held: Held
    ) -> bytes | web.Response:
        """The body, or the answer to give instead of storing it."""
        limit = inbound.max_body_bytes
        read_timeout = self.settings.server.read_timeout
        try:
            if request.content.is_eof():
                # All of it came with the headers (most webhooks): nothing to wait for, and no
                # timer to arm and cancel per request.
                return await read_body(request.content, request.content_length, limit, held)
            # The timeout stops a client that trickles its body from holding its share of the
            # budget, and the handler, for longer than read_timeout.
            async with asyncio.timeout(read_timeout):
                return await read_body(request.content, request.content_length, limit, held)
        except BodyTooLargeError:
            return self._reject(
                inbound, "too_large", 413, f"body larger than {limit} bytes", request
            )
        except OverBudgetError:
            return self._overloaded(inbound, request)
        except TimeoutError:
            response = self._reject(
                inbound, "read_timeout", 408, f"body not received within {read_timeout:g}s", request
            )
            response.force_close()
            return response
        except (BodyIncompleteError, ConnectionError, RequestPayloadError) as exc:
            # A client that goes away mid-upload is routine on the internet: one line, no
            # traceback; and the same answer for a body whose chunked framing is broken.
            reason = str(exc) if isinstance(exc, BodyIncompleteError) else _payload_problem(exc)
            response = self._reject(inbound, "aborted", 400, f"body incomplete: {reason}", request)
            response.force_close()
            return response

    async def _store(
        self,
        inbound: InboundConfig,
        request: web.Request,
        body: bytes,
        t0: float,
        received_at: float,
    ) -> web.Response:
        if not body:
            self.metrics.requests.labels(inbound.name, "validation").inc()
            return _text(200, "OK")
        # Headers come from the raw bytes: aiohttp's decoded values can carry lone surrogates
        # for non-UTF-8 bytes, which no database can store as text.
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        raw = RawRequest(
            id=new_id(),
            inbound=inbound.name,
            method=request.method,
            path=request.path,
            query=mask_query(_storable(request.query_string)),
            headers=mask_headers(headers),
            body=body,
            content_type=next((v for k, v in headers if k.lower() == "content-type"), ""),
            peer=request.remote or "",
            received_at=received_at,
        )
        if len(body) <= PARSE_INLINE_BYTES:
            reason, events = self._check_and_derive(inbound, request, raw)
        else:
            # Parsing takes ~15x a body's size at its peak (a 9 MiB Mandrill batch: 139 MiB) and
            # holds the GIL, so large bodies are parsed one at a time: memory stays bounded and
            # no throughput is lost.
            async with self._parse_lock:
                reason, events = await asyncio.to_thread(
                    self._check_and_derive, inbound, request, raw
                )
        if reason is not None:
            return self._reject(inbound, "rejected_auth", 401, reason, request)
        try:
            stored = await self.store.ingest(raw, events)
        except StoreError as exc:
            return self._reject(
                inbound, "store_error", 503, f"storage unavailable, retry later ({exc})", request
            )
        elapsed = time.perf_counter() - t0
        self.quotas.stored(inbound, raw)
        accepted, duration = self._hot[inbound.name]
        accepted.inc()
        duration.observe(elapsed)
        self.metrics.count_events(inbound.name, [e.type for e in events], inbound.source)
        if duplicates := stored.duplicates:
            self.metrics.duplicates.labels(inbound.name).inc(len(duplicates))
            # A retry storm makes this as frequent as the accepted line: the same fast path.
            pairs = ",".join(f"{dup}->{orig}" for dup, orig in list(duplicates.items())[:5])
            hot_log.log(
                logging.INFO,
                f"request inbound={inbound.name} request={raw.id} duplicates={pairs}"
                " (not delivered again)",
            )
        self._log_accepted(inbound, raw, events, stored.event_ids, elapsed)
        return _text(200, "OK")

    def _check_and_derive(
        self, inbound: InboundConfig, request: web.Request, raw: RawRequest
    ) -> tuple[str | None, list[NewEvent]]:
        """Why the signature is refused, or None and the events; both read the whole body."""
        # A Mandrill body's fields are decoded once, for the signature and for the events.
        form = mailchimp.mandrill_form(raw.body) if inbound.kind is InboundKind.MANDRILL else None
        reason = self._signature_problem(inbound, request, raw.body, raw.received_at, form)
        if reason is not None:
            return reason, []
        return None, derive_events(inbound, raw, self.settings.destinations, form)

    def _signature_problem(
        self,
        inbound: InboundConfig,
        request: web.Request,
        body: bytes,
        now: float,
        form: mailchimp.MandrillForm | None = None,
    ) -> str | None:
        if inbound.kind is InboundKind.MAILCHIMP and inbound.signing_secret:
            return mailchimp.verify_mailchimp_signature(
                inbound.signing_secret, body, request.headers.get("X-Mailchimp-Signature"), now
            )
        if inbound.kind is InboundKind.MANDRILL and inbound.mandrill_key:
            assert inbound.public_url is not None  # config validation requires it
            header = request.headers.get("X-Mandrill-Signature")
            if mailchimp.verify_mandrill_signature(
                inbound.mandrill_key, inbound.public_url, body, header, form
            ):
                return None
            # Mailchimp's "test webhook" POST is an empty batch signed with the fixed key
            # "test-webhook", not the webhook's own key; it carries no event to protect. That
            # key is public: anything else it signs, a body that does not parse included, is
            # refused, or anyone could have relay store and forward what they liked.
            if mailchimp.verify_mandrill_signature(
                MANDRILL_TEST_KEY, inbound.public_url, body, header, form
            ):
                batch = mailchimp.parse_mandrill(body, form)
                if batch.error is None and not batch.events:
                    return None
            return "invalid X-Mandrill-Signature"
        return None

    def _log_accepted(
        self,
        inbound: InboundConfig,
        raw: RawRequest,
        events: Sequence[NewEvent],
        event_ids: Sequence[str],
        elapsed: float,
    ) -> None:
        if not hot_log.logger.isEnabledFor(logging.INFO):
            return
        ids = ",".join(event_ids[:5]) or "-"
        types = ",".join(e.type for e in events[:5]) or "-"
        more = f"+{len(events) - 5}" if len(events) > 5 else ""
        hot_log.log(
            logging.INFO,
            f"request inbound={inbound.name} outcome=accepted status=200 request={raw.id}"
            f" events={ids}{more} type={types} bytes={len(raw.body)}"
            f" duration_ms={elapsed * 1000:.1f}",
        )
