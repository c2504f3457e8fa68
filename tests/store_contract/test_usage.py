"""Bytes stored per inbound: what per-inbound quotas compare, kept by ingest and prune."""

from __future__ import annotations

import orjson

from relay.model import RawRequest
from relay.store import Store
from relay.store.rules import stored_size
from tests.store_contract.kit import DELIVERED, attempt, claim_all, new_event, raw_request


def size(request: RawRequest) -> int:
    return stored_size(request.body, orjson.dumps(request.headers).decode())


async def test_an_empty_store_has_no_usage(store: Store) -> None:
    assert await store.inbound_usage() == {}


async def test_every_stored_request_counts_its_body_and_headers_to_its_inbound(
    store: Store,
) -> None:
    a1 = raw_request(b"type=subscribe&data[email]=a@example.com")
    a2 = raw_request(b"x" * 5000, headers=(("X-Caf\u00e9", "\u00e9t\u00e9"),))
    b1 = raw_request(b"{}", inbound="journey")
    await store.ingest(a1, [new_event("crm", dedup_key="k")])
    await store.ingest(a2, [new_event("crm"), new_event("dw")])
    await store.ingest(b1, [new_event(inbound="journey")])
    # A duplicate is stored too (never delivered twice), so it takes room like any request.
    dup = raw_request(b"type=subscribe&data[email]=a@example.com")
    assert (await store.ingest(dup, [new_event("crm", dedup_key="k")])).duplicates
    usage = await store.inbound_usage()
    assert usage == {
        "audience-user": size(a1) + size(a2) + size(dup),
        "journey": size(b1),
    }
    assert size(a2) == 5000 + len('[["X-Café","été"]]'.encode())


async def test_prune_gives_back_what_its_requests_took(store: Store) -> None:
    kept = raw_request(b"kept")
    gone = raw_request(b"gone" * 100)
    await store.ingest(kept, [new_event("crm")])
    await store.ingest(gone, [new_event("dw")])
    for d in await claim_all(store, "dw"):
        assert await store.complete(d, attempt(200), DELIVERED)
    assert (await store.prune(0.0)).deleted_requests == 1
    # The request whose delivery is still pending stays, and so do its bytes.
    assert await store.inbound_usage() == {"audience-user": size(kept)}
    for d in await claim_all(store, "crm"):
        assert await store.complete(d, attempt(200), DELIVERED)
    await store.prune(0.0)
    assert (await store.inbound_usage()).get("audience-user", 0) == 0
