"""The commands over work in flight as an operator runs them against a real `relay serve`:
`relay deliveries discard|retry|resolve`, `relay replays list|show|cancel`, `relay audit list`."""

from __future__ import annotations

import orjson

from tests.support import Sink, subscribe_body, wait_until
from tests.test_cli import Running, cli, running

__all__ = ["running"]


async def test_discard_counts_asks_and_drops_held_deliveries(running: Running, sink: Sink) -> None:
    url = running.url
    assert (await cli("destinations", "pause", "crm", url=url)).code == 0
    await running.post(*(subscribe_body(f"user{n}@example.com") for n in range(3)))

    dry = await cli("deliveries", "discard", "--destination", "crm", "--dry-run", url=url)
    assert (dry.code, dry.out.strip()) == (0, "dry run: 3 waiting deliveries match; none discarded")
    nobody = await cli("deliveries", "discard", "--destination", "crm", url=url)
    assert nobody.code == 2
    assert nobody.err.strip() == (
        "relay: refusing to discard 3 waiting deliveries without --yes (stdin is not a terminal)"
    )
    none = await cli("deliveries", "discard", url=url)
    assert none.code == 2 and "give at least one filter" in none.err
    as_option = await cli(
        "deliveries", "discard", "--filter", "destination=crm", "--filter", "email=USER1@example.com",
        "--dry-run", url=url,
    )  # fmt: skip
    assert as_option.out.strip() == "dry run: 1 waiting deliveries match; none discarded"
    unknown = await cli("deliveries", "discard", "--filter", "colour=red", url=url)
    assert unknown.code == 2 and "unknown key 'colour'" in unknown.err
    done = await cli(
        "deliveries", "discard", "--destination", "crm", "--type", "sub*", "--yes",
        "--operator", "dana", url=url,
    )  # fmt: skip
    assert (done.code, done.out.strip()) == (0, "discarded 3 deliveries (crm 3)")
    assert (await cli("destinations", "resume", "crm", url=url)).code == 0
    listed = await cli("deliveries", "list", "--state", "discarded", url=url)
    assert len(listed.out.splitlines()) == 4
    again = await cli("deliveries", "discard", "--destination", "crm", "--yes", url=url)
    assert again.out.strip() == "nothing to discard"

    audit = await cli("audit", "list", url=url)
    header, *rows = audit.out.splitlines()
    assert header.split() == ["ID", "AT", "OPERATOR", "ACTION", "TARGET", "FROM", "DETAIL"]
    assert [r.split()[3] for r in rows] == ["resume", "discard", "pause"]
    assert rows[1].split()[2] == "dana" and rows[0].split()[2].startswith("cli:")
    assert sink.at("/crm") == []


async def test_replays_are_listed_shown_and_a_finished_one_is_not_cancelled(
    running: Running, sink: Sink
) -> None:
    url = running.url
    await running.post(subscribe_body("ann@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    replayed = await cli("replay", "--type", "subscribe", "--to", "crm", url=url)
    assert replayed.code == 0, replayed.err
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="the replayed delivery")

    listed = await cli("replays", "list", url=url)
    header, row = listed.out.splitlines()
    assert header.split() == ["ID", "STATE", "BY", "REQUESTED", "EVENTS", "DELIVERIES", "FILTER"]
    assert row.split()[:2] == ["1", "done"] and row.split()[4:6] == ["1/1", "1"]

    async def delivered() -> bool:
        shown = orjson.loads((await cli("replays", "show", "1", "--json", url=url)).out)
        return bool(shown["delivered"] == 1)

    await wait_until(delivered, what="the replay's outcome")
    shown = await cli("replays", "show", "1", url=url)
    assert "progress   1 of 1 events, 1 deliveries created" in shown.out
    assert "outcome    1 delivered, 0 dead, 0 pending, 0 discarded" in shown.out
    cancel = await cli("replays", "cancel", "1", url=url)
    assert (cancel.code, cancel.err.strip()) == (1, "relay: replay 1 is done, not running")
    missing = await cli("replays", "show", "7", url=url)
    assert (missing.code, missing.err.strip()) == (1, "relay: unknown replay: 7")


async def test_retry_of_a_delivered_one_says_what_to_do_instead(
    running: Running, sink: Sink
) -> None:
    await running.post(subscribe_body("ann@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 1)
    listed = orjson.loads(
        (await cli("deliveries", "list", "--destination", "crm", "--json", url=running.url)).out
    )
    delivery_id = listed["deliveries"][0]["id"]

    async def delivered() -> bool:
        got = await cli("deliveries", "list", "--state", "delivered", "--json", url=running.url)
        return any(d["id"] == delivery_id for d in orjson.loads(got.out)["deliveries"])

    await wait_until(delivered)
    retried = await cli("deliveries", "retry", str(delivery_id), url=running.url)
    assert retried.code == 1
    assert retried.err.strip() == (
        f"relay: delivery {delivery_id} was delivered: replay its event to send it again"
    )
    resolved = await cli("deliveries", "resolve", str(delivery_id), url=running.url)
    assert resolved.err.strip() == (
        f"relay: delivery {delivery_id} is delivered: only dead deliveries are resolved"
    )
