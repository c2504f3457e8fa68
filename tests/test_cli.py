"""The operator commands as an operator runs them: `python -m relay ...` against a real
`relay serve` process, reading stdout, stderr and exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support import (
    ADMIN_TABLE,
    ADMIN_TOKEN,
    Sink,
    config_text,
    destination,
    free_port,
    subscribe_body,
    wait_until,
)
from tests.test_process import RelayProcess


@dataclass
class Result:
    code: int
    out: str
    err: str
    raw: bytes


async def cli(*args: str, token: str | None = ADMIN_TOKEN, url: str | None = None) -> Result:
    env = {k: v for k, v in os.environ.items() if k != "RELAY_ADMIN_TOKEN"}
    if token is not None:
        env["RELAY_ADMIN_TOKEN"] = token
    argv = [*args, "--url", url] if url else list(args)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(), out)


@dataclass
class Running:
    process: RelayProcess
    url: str
    config: Path

    async def post(self, *bodies: bytes) -> None:
        async with aiohttp.ClientSession() as session:
            sem = asyncio.Semaphore(8)

            async def one(body: bytes) -> None:
                async with sem, session.post(
                    f"{self.url}/hooks/user?secret=s3cret", data=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                ) as r:  # fmt: skip
                    assert r.status == 200

            await asyncio.gather(*(one(b) for b in bodies))


@pytest.fixture
async def running(tmp_path: Path, sink: Sink) -> AsyncIterator[Running]:
    port = free_port()
    cfg = tmp_path / "relay.toml"
    dests = destination("crm", sink.url("/crm")) + destination(
        "warehouse", sink.url("/wh"), types=["unsubscribe"]
    )
    cfg.write_text(config_text(tmp_path / "relay.db", dests, extra=ADMIN_TABLE, port=port))
    rp = RelayProcess(cfg, port, tmp_path / "relay.log")
    await rp.start()
    yield Running(rp, f"http://127.0.0.1:{port}", cfg)
    assert rp.proc is not None
    rp.kill(signal.SIGTERM)
    await asyncio.to_thread(rp.wait, 20)


async def test_operator_commands_find_show_replay_pause_and_prune(
    running: Running, sink: Sink
) -> None:
    await running.post(
        subscribe_body("ann@example.com"), subscribe_body("bob@example.com", kind="unsubscribe")
    )
    await wait_until(lambda: len(sink.received) == 3, what="the live deliveries")
    url = running.url

    listed = await cli("events", "list", "--config", str(running.config))
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split() == ["ID", "RECEIVED", "INBOUND", "TYPE", "SOURCE", "EMAIL", "LIST"]
    assert [r.split()[5] for r in rows] == ["bob@example.com", "ann@example.com"]

    as_json = orjson.loads(
        (await cli("events", "list", "--type", "unsubscribe", "--json", url=url)).out
    )
    (bob,) = as_json["events"]
    shown = await cli("events", "show", bob["id"], url=url)
    assert shown.code == 0 and "type       unsubscribe" in shown.out
    assert "crm" in shown.out and "warehouse" in shown.out and "delivered" in shown.out
    body = await cli("events", "show", bob["id"], "--body", url=url)
    assert body.raw == subscribe_body("bob@example.com", kind="unsubscribe")

    # A dry run of one event says where it would go and sends nothing.
    dry_one = await cli("replay", bob["id"], "--dry-run", url=url)
    assert dry_one.out.strip() == (
        "dry run: 1 events match; would create 2 deliveries (crm 1, warehouse 1)"
    )
    replayed = await cli("replay", bob["id"], "--to", "crm", "--operator", "erin", url=url)
    assert replayed.code == 0, replayed.err
    assert replayed.out.startswith("replay 1: event ") and "-> crm (pending)" in replayed.out
    await wait_until(
        lambda: sum(1 for r in sink.at("/crm") if r.headers.get("X-Relay-Replay")) == 1
    )

    dry = await cli("replay", "--type", "subscribe", "--since", "2001-01-01", "--dry-run", url=url)
    assert dry.out.strip() == "dry run: 1 events match; would create 1 deliveries (crm 1)"

    paused = await cli("destinations", "pause", "crm", url=url)
    assert paused.out.strip() == "crm: paused (0 pending deliveries held)"
    table = await cli("destinations", "list", url=url)
    states = {line.split()[0]: line.split()[1] for line in table.out.splitlines()[1:]}
    assert states == {"crm": "paused", "warehouse": "active"}
    assert (await cli("destinations", "resume", "crm", url=url)).code == 0

    delivered = await cli(
        "deliveries", "list", "--state", "delivered", "--destination", "warehouse", url=url
    )
    assert delivered.out.splitlines()[0].split()[:4] == ["ID", "EVENT", "DESTINATION", "STATE"]
    assert delivered.out.splitlines()[1].split()[2:4] == ["warehouse", "delivered"]

    pruned = await cli("prune", "--older-than", "365", url=url)
    assert pruned.out.strip() == "deleted 0 events and 0 requests older than 365 days"


async def test_large_replay_asks_first_and_runs_in_the_background_with_yes(
    running: Running, sink: Sink
) -> None:
    await running.post(*(subscribe_body(f"u{i}@example.com") for i in range(520)))
    await wait_until(lambda: len(sink.at("/crm")) == 520, timeout=30, what="the live deliveries")

    refused = await cli("replay", "--type", "subscribe", "--to", "crm", url=running.url)
    assert refused.code == 2
    assert refused.err == (
        "relay: refusing to replay 520 events, 520 deliveries (crm 520) without --yes"
        " (stdin is not a terminal)\n"
    )
    assert len(sink.at("/crm")) == 520

    done = await cli("replay", "--type", "subscribe", "--to", "crm", "--yes", url=running.url)
    assert done.code == 0, done.err
    assert done.out.strip() == "replay 1 done: 520 events, 520 deliveries (crm 520)"
    await wait_until(
        lambda: len(sink.at("/crm")) == 1040, timeout=30, what="the replayed deliveries"
    )


async def test_errors_are_one_line_and_exit_non_zero(running: Running) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    refused = await cli("events", "list", url=down)
    assert (refused.code, refused.err) == (1, f"relay: cannot reach {down}: connection refused\n")

    bad = await cli("events", "list", token="wrong", url=running.url)
    assert (bad.code, bad.err) == (
        1,
        "relay: admin API refused the token (401): invalid admin token\n",
    )

    missing = await cli("destinations", "pause", "nope", url=running.url)
    assert (missing.code, missing.err) == (1, "relay: unknown destination: nope\n")

    unknown = await cli("events", "show", "NOPE", url=running.url)
    assert (unknown.code, unknown.err) == (1, "relay: unknown event: NOPE\n")

    no_token = await cli("events", "list", token=None, url=running.url)
    assert (no_token.code, no_token.err) == (
        2,
        "relay: no admin token: set RELAY_ADMIN_TOKEN or pass --token-file\n",
    )

    no_filter = await cli("replay", url=running.url)
    assert no_filter.code == 2 and no_filter.err.count("\n") == 1

    # A name with a slash stays one path segment: it cannot reach another admin route.
    sideways = await cli("events", "show", "../destinations", url=running.url)
    assert (sideways.code, sideways.err) == (1, "relay: unknown event: ../destinations\n")
    dots = await cli("destinations", "pause", "..", url=running.url)
    assert (dots.code, dots.err) == (2, "relay: not a valid id or name: '..'\n")

    unresolvable = await cli("events", "list", url="http://relay.invalid:8080")
    assert unresolvable.code == 1
    assert unresolvable.err.startswith("relay: cannot reach http://relay.invalid:8080: ")
    assert "unknown error" not in unresolvable.err

    odd_config = running.config.parent / "odd.toml"
    odd_config.write_text('server = "x"\n')
    odd = await cli("destinations", "list", "--config", str(odd_config))
    assert (odd.code, odd.err) == (2, f"relay: {odd_config}: server must be a table\n")
    binary_token = running.config.parent / "token"
    binary_token.write_bytes(b"\xff\xfe")
    undecodable = await cli("destinations", "list", "--token-file", str(binary_token))
    assert (undecodable.code, undecodable.err) == (
        2,
        f"relay: token file {binary_token} is not UTF-8 text\n",
    )
    results = (refused, bad, missing, unknown, no_token, no_filter, sideways, dots)
    for result in (*results, unresolvable, odd, undecodable):
        assert "Traceback" not in result.err


async def _cli_on_terminal(answer: str, *args: str, url: str) -> Result:
    """Run the CLI with a real terminal (a pty) as stdin, typing ``answer`` at its question."""
    import pty

    controller, terminal = pty.openpty()
    env = {**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", *args, "--url", url,
            stdin=terminal, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        os.write(controller, answer.encode() + b"\n")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(), out)


def _stored_events(running: Running) -> int:
    import sqlite3

    with sqlite3.connect(running.config.parent / "relay.db") as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


async def test_prune_needs_force_for_zero_days_asks_first_and_has_a_dry_run(
    running: Running, sink: Sink
) -> None:
    await running.post(*(subscribe_body(f"p{i}@example.com") for i in range(3)))
    await wait_until(lambda: len(sink.at("/crm")) == 3, what="the live deliveries")

    async def finished() -> bool:
        listed = await cli("deliveries", "list", "--state", "delivered", "--json", url=running.url)
        return len(orjson.loads(listed.out)["deliveries"]) == 3

    await wait_until(finished, what="the deliveries to be recorded")
    url = running.url

    zero = await cli("prune", "--older-than", "0", url=url)
    assert (zero.code, zero.err) == (
        2,
        "relay: --older-than 0 deletes every finished event up to now; add --force to mean it\n",
    )
    negative = await cli("prune", "--older-than", "-1", "--force", url=url)
    assert negative.code == 2 and negative.err.count("\n") == 1

    dry = await cli("prune", "--older-than", "0", "--force", "--dry-run", url=url)
    assert dry.code == 0, dry.err
    assert dry.out.startswith("dry run: 3 events received before ")
    assert "would be deleted" in dry.out
    as_json = orjson.loads(
        (await cli("prune", "--older-than", "0", "--force", "--dry-run", "--json", url=url)).out
    )
    assert (as_json["matched"], as_json["dry_run"]) == (3, True)

    # No terminal to ask on: refused without --yes, nothing deleted.
    refused = await cli("prune", "--older-than", "0", "--force", url=url)
    assert refused.code == 2
    assert refused.err.startswith("relay: refusing to delete 3 events received before ")
    assert refused.err.endswith(" without --yes (stdin is not a terminal)\n")

    # On a terminal it asks; "n" keeps everything.
    declined = await _cli_on_terminal("n", "prune", "--older-than", "0", "--force", url=url)
    assert declined.code == 2
    assert declined.out.startswith("Delete 3 events received before ")
    assert declined.err == "relay: delete cancelled\n"
    assert _stored_events(running) == 3

    accepted = await _cli_on_terminal("y", "prune", "--older-than", "0", "--force", url=url)
    assert accepted.code == 0, accepted.err
    assert accepted.out.rstrip().endswith("deleted 3 events and 3 requests older than 0 days")
    assert _stored_events(running) == 0

    again = await cli("prune", "--older-than", "0", "--force", "--yes", url=url)
    assert again.out == "deleted 0 events and 0 requests older than 0 days\n"


async def test_a_closed_pipe_ends_the_listing_quietly(running: Running) -> None:
    await running.post(*(subscribe_body(f"pipe{i}@example.com") for i in range(5)))
    # Like `relay events list | head -1` once head has gone: the pipe's reader is closed.
    reader, writer = os.pipe()
    os.close(reader)
    env = {**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "events", "list", "--url", running.url,
            stdin=asyncio.subprocess.DEVNULL, stdout=writer, stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
    finally:
        os.close(writer)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, err.decode()) == (141, "")


async def test_usage_problems_exit_2_with_one_line(running: Running) -> None:
    host_port = running.url.removeprefix("http://")
    no_scheme = await cli("events", "list", url=host_port)
    assert (no_scheme.code, no_scheme.err) == (
        2,
        f"relay: --url needs a scheme: http://{host_port}, not {host_port!r}\n",
    )
    ftp = await cli("events", "list", url="ftp://" + host_port)
    assert ftp.code == 2 and ftp.err.startswith("relay: --url must be http://HOST:PORT")

    for args, line in (
        (("--state", "bogus"), "relay: --state: 'bogus' is not one of pending,"),
        (("--limit", "0"), "relay: --limit: expected a whole number from 1 to 1000"),
        (("--since", "yesterday"), "relay: --since: 'yesterday' is not an ISO-8601 time"),
    ):
        result = await cli("events", "list", *args, url=running.url)
        assert result.code == 2, (args, result)
        assert result.err.startswith(line) and result.err.count("\n") == 1, result.err
    bad_state = await cli("deliveries", "list", "--state", "lost", url=running.url)
    assert bad_state.code == 2 and bad_state.err.startswith("relay: --state: 'lost'")


async def test_the_next_page_hint_goes_to_stderr(running: Running) -> None:
    await running.post(*(subscribe_body(f"page{i}@example.com") for i in range(3)))
    as_json = await cli("events", "list", "--limit", "2", "--json", url=running.url)
    cursor = orjson.loads(as_json.out)["next_cursor"]
    assert as_json.err == "" and cursor
    page = await cli("events", "list", "--limit", "2", url=running.url)
    assert page.code == 0
    header, *rows = page.out.splitlines()
    assert header.startswith("ID") and len(rows) == 2
    assert page.err == f"more: add --cursor {cursor}\n"


async def test_events_show_has_request_headers_attempts_under_their_own_headers_and_responses(
    running: Running, sink: Sink
) -> None:
    sink.on("/crm", 500, 200)
    await running.post(subscribe_body("shown\x1b[31m@example.com"))
    await wait_until(lambda: len(sink.at("/crm")) == 2, what="a failed and a good attempt")
    listed = orjson.loads((await cli("events", "list", "--json", url=running.url)).out)
    event_id = listed["events"][0]["id"]

    async def recorded() -> bool:
        shown = orjson.loads((await cli("events", "show", event_id, "--json", url=running.url)).out)
        return [d["state"] for d in shown["deliveries"]] == ["delivered"]

    await wait_until(recorded, what="the second attempt to be recorded")
    shown = await cli("events", "show", event_id, url=running.url)
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    # A terminal escape from the webhook is shown, not sent to the terminal.
    assert "\x1b" not in shown.out and "shown\\x1b[31m@example.com" in shown.out

    at = lines.index("request headers:")
    assert "  Content-Type: application/x-www-form-urlencoded" in lines[at:]

    deliveries = lines.index("deliveries:")
    assert lines[deliveries + 1].split() == [
        "DELIVERY", "DESTINATION", "STATE", "TRIES", "STATUS", "REPLAY", "NEXT", "ERROR",
    ]  # fmt: skip
    assert lines[deliveries + 2].split()[1:5] == ["crm", "delivered", "2", "200"]
    attempts = next(i for i, line in enumerate(lines) if line.startswith("attempts of delivery"))
    assert lines[attempts].endswith("(crm):")
    assert lines[attempts + 1].split() == [
        "ATTEMPT", "STARTED", "OUTCOME", "STATUS", "DURATION", "ERROR",
    ]  # fmt: skip
    assert [line.split()[2:4] for line in lines[attempts + 2 : attempts + 4]] == [
        ["5xx", "500"],
        ["2xx", "200"],
    ]
    assert lines[attempts + 4 :] == [
        "  response to attempt 1:",
        "    sink says hi",
        "  response to attempt 2:",
        "    sink says hi",
    ]


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("s3cret\n", "s3cret"),
        ("  dGVzdA==  \n", "dGVzdA=="),  # base64 padding is not NAME=value
        ("MC_HOOK_SECRET=x\nRELAY_ADMIN_TOKEN=s3cret\nCRM_URL=https://crm/\n", "s3cret"),
        ("# relay's secrets\nRELAY_ADMIN_TOKEN='s3cret'\n", "s3cret"),
        ('export RELAY_ADMIN_TOKEN = "s3=cret"\n', "s3=cret"),
        ("MC_HOOK_SECRET=x\nCRM_URL=https://crm/\n", None),
        ("RELAY_ADMIN_TOKEN=\n", None),
        ("", None),
    ],
)
def test_a_token_file_holds_the_token_or_the_services_environment_file(
    text: str, token: str | None
) -> None:
    from relay.cli.connect import token_from_file

    assert token_from_file(text) == token


async def test_the_systemd_environment_file_serves_as_token_file(running: Running) -> None:
    env_file = running.config.parent / "relay.env"
    env_file.write_text(f"MC_HOOK_SECRET=x\nRELAY_ADMIN_TOKEN={ADMIN_TOKEN}\n")
    listed = await cli(
        "destinations", "list", "--token-file", str(env_file), token=None, url=running.url
    )
    assert listed.code == 0, listed.err
    env_file.write_text("MC_HOOK_SECRET=x\nCRM_URL=https://crm/\n")
    missing = await cli(
        "destinations", "list", "--token-file", str(env_file), token=None, url=running.url
    )
    assert (missing.code, missing.err) == (
        2,
        f"relay: token file {env_file} holds neither a token nor a RELAY_ADMIN_TOKEN= line\n",
    )


async def test_a_url_with_credentials_is_one_line_without_its_password() -> None:
    # aiohttp refuses credentials in a URL beside the Authorization header: a traceback, before.
    result = await cli("events", "list", url="http://user:pw@127.0.0.1:8080/")
    assert (result.code, result.err) == (
        2,
        "relay: --url must not carry credentials (http://user:***@127.0.0.1:8080/): the admin"
        " token is read from RELAY_ADMIN_TOKEN or --token-file\n",
    )
