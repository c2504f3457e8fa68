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

from relay.config import InboundConfig, Settings
from relay.model import InboundKind, NewEvent, RawRequest, new_id
from relay.obs.logs import HotLog
from relay.obs.metrics import Metrics
from relay.pipeline.events import derive_events
from relay.protocols import mailchimp
from relay.server.auth import check_credentials, mask_headers, mask_query
from relay.store import Store, StoreError

log = logging.getLogger("relay.ingest")
hot_log = HotLog("relay.ingest")

MANDRILL_TEST_KEY = "test-webhook"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Parsing megabytes of form fields takes seconds of CPU; bodies larger than this are parsed in a
# thread so that other requests keep their millisecond answers meanwhile.
PARSE_INLINE_BYTES = 256 * 1024


def _storable(text: str) -> str:
    """Text with undecodable bytes (lone surrogates from aiohttp) replaced, so it can be stored."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _text(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n")


class Ingest:
    """The inbound endpoints of one relay: one route per configured inbound path."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        # labels() costs a few microseconds a call; the per-request series are looked up once.
        self._hot = {
            i.name: (
                metrics.requests.labels(i.name, "accepted"),
                metrics.ingest_duration.labels(i.name),
            )
            for i in settings.inbounds
        }

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
        limit = self.settings.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._reject(
                inbound, "too_large", 413, f"body larger than {limit} bytes", request
            )
        read_timeout = self.settings.server.read_timeout
        try:
            # aiohttp enforces client_max_size while reading; the timeout stops a client that
            # trickles its body from holding the handler forever.
            async with asyncio.timeout(read_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(
                inbound, "too_large", 413, f"body larger than {limit} bytes", request
            )
        except TimeoutError:
            response = self._reject(
                inbound, "read_timeout", 408, f"body not received within {read_timeout:g}s", request
            )
            response.force_close()
            return response
        if not body:
            self.metrics.requests.labels(inbound.name, "validation").inc()
            return _text(200, "OK")
        if (reason := self._signature_problem(inbound, request, body, received_at)) is not None:
            return self._reject(inbound, "rejected_auth", 401, reason, request)

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
            events = derive_events(inbound, raw, self.settings.destinations)
        else:
            events = await asyncio.to_thread(
                derive_events, inbound, raw, self.settings.destinations
            )
        try:
            stored = await self.store.ingest(raw, events)
        except StoreError as exc:
            return self._reject(
                inbound, "store_error", 503, f"storage unavailable, retry later ({exc})", request
            )
        elapsed = time.perf_counter() - t0
        accepted, duration = self._hot[inbound.name]
        accepted.inc()
        duration.observe(elapsed)
        for event in events:
            self.metrics.count_event(inbound.name, event.type, inbound.source)
        if duplicates := stored.duplicates:
            self.metrics.duplicates.labels(inbound.name).inc(len(duplicates))
            log.info(
                "request inbound=%s request=%s duplicates=%s (not delivered again)",
                inbound.name,
                raw.id,
                ",".join(f"{dup}->{orig}" for dup, orig in list(duplicates.items())[:5]),
            )
        self._log_accepted(inbound, raw, events, stored.event_ids, elapsed)
        return _text(200, "OK")

    def _signature_problem(
        self, inbound: InboundConfig, request: web.Request, body: bytes, now: float
    ) -> str | None:
        if inbound.kind is InboundKind.MAILCHIMP and inbound.signing_secret:
            return mailchimp.verify_mailchimp_signature(
                inbound.signing_secret, body, request.headers.get("X-Mailchimp-Signature"), now
            )
        if inbound.kind is InboundKind.MANDRILL and inbound.mandrill_key:
            assert inbound.public_url is not None  # config validation requires it
            header = request.headers.get("X-Mandrill-Signature")
            if mailchimp.verify_mandrill_signature(
                inbound.mandrill_key, inbound.public_url, body, header
            ):
                return None
            # Mailchimp's "test webhook" POST is an empty batch signed with the fixed key
            # "test-webhook", not the webhook's own key; it carries no event to protect. That
            # key is public: anything else it signs, a body that does not parse included, is
            # refused, or anyone could have relay store and forward what they liked.
            if mailchimp.verify_mandrill_signature(
                MANDRILL_TEST_KEY, inbound.public_url, body, header
            ):
                batch = mailchimp.parse_mandrill(body)
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
