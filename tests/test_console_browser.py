"""The operator console in a real browser (Chromium driven by Playwright), against a real
``relay serve`` process with its admin address, and a real sink.

Kept to a few decisive flows: a browser start costs seconds, so one Chromium and one relay serve
the whole module (each pytest worker's share of it). Each flow stands alone: it makes the
events it needs and checks only what it did, in whatever order or worker it runs. Screenshots go to tests/artifacts/console/ (README's two are copies).

Needs Debian's Chromium (``apt-get install -y chromium``; ``.ci/run`` installs it) and the
``playwright`` package from the test extra; without them these tests skip, saying so.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import (
    ADMIN_TABLE,
    ADMIN_TOKEN,
    AUDIENCE_INBOUNDS,
    FORM,
    REPO,
    Sink,
    config_text,
    destination,
    free_port,
    subscribe_body,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL = (
    "browser tests SKIPPED: they need Chromium and Playwright for Python. Install them with "
    "`apt-get install -y chromium` and `pip install -e '.[test]'` (.ci/run does both)"
)
if CHROMIUM is None:
    pytest.skip(INSTALL, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason=INSTALL)
expect = sync_api.expect

ARTIFACTS = REPO / "tests" / "artifacts" / "console"
ATTACKER = "attacker.invalid"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def poll(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for a condition with a deadline (the sync tests' wait_until)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class ThreadSink:
    """tests.support.Sink served from its own thread, so synchronous tests can use it."""

    def __init__(self) -> None:
        self.sink = Sink()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.sink.handle)
        self.sink.server = TestServer(app, host="127.0.0.1")
        await self.sink.server.start_server()

    def stop(self) -> None:
        assert self.sink.server is not None
        asyncio.run_coroutine_threadsafe(self.sink.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Stack:
    """A relay process with a public and an operator address, and the sink behind it."""

    public: str
    admin: str
    sink: Sink
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    seen: dict[str, int] = field(default_factory=dict)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(
            f"{self.public}{path}?secret=s3cret",
            data=body,
            headers={"Content-Type": FORM, **(headers or {})},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)

    def admin_get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.admin + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def admin_post(self, path: str, body: Any, operator: str) -> Any:
        request = urllib.request.Request(
            self.admin + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Relay-Operator": operator},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def status(self, url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code


MANDRILL = """
[[inbound]]
name = "transactional"
path = "/hooks/mandrill"
kind = "mandrill"
secret = "s3cret"
source = "mandrill"
"""


def _config(public: int, admin: int, sink: Sink, db: Path) -> str:
    return config_text(
        db,
        port=public,
        inbounds=AUDIENCE_INBOUNDS + MANDRILL,
        extra=ADMIN_TABLE + f'listen = "127.0.0.1:{admin}"\n',
        destinations=destination("crm", sink.url("/crm"), sources=["user"])
        + destination(
            "flaky", sink.url("/flaky"), sources=["admin"], format="json",
            retry={"max_attempts": 2, "max_delay": 0.1},
        )
        # Gets only what is replayed to it, slowly: a replay to it runs long enough to cancel.
        + destination("bulk", sink.url("/bulk"), sources=["backfill"], rate=0.2),
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    sink = ThreadSink()
    sink.start()
    public, admin = free_port(), free_port()
    config = tmp / "relay.toml"
    config.write_text(_config(public, admin, sink.sink, tmp / "relay.db"))
    s = Stack(f"http://127.0.0.1:{public}", f"http://127.0.0.1:{admin}", sink.sink, tmp / "log")
    with s.log.open("ab") as log:
        s.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        assert s.proc is not None
        if s.proc.poll() is not None:
            pytest.fail(f"relay exited with {s.proc.returncode}: {s.log.read_text()}")
        try:
            return s.status(s.admin + "/readyz") == 200
        except OSError:
            return False

    poll(ready, "relay to become ready on its admin address", timeout=30)
    yield s
    s.proc.terminate()
    s.proc.wait(20)
    sink.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Watched:
    """A page, with every dialog it opened and every request it made elsewhere than relay."""

    page: Any
    dialogs: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def watched(browser: Any, stack: Stack) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Watched(context.new_page())
    allowed = urlsplit(stack.admin).netloc

    def on_dialog(dialog: Any) -> None:
        w.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_request(request: Any) -> None:
        if urlsplit(request.url).netloc != allowed:
            w.elsewhere.append(request.url)

    def on_console(message: Any) -> None:
        # Content-Security-Policy violations are reported here; expected 4xx pages are not.
        if message.type == "error" and "status of 40" not in message.text:
            w.errors.append(message.text)

    w.page.on("dialog", on_dialog)
    w.page.on("request", on_request)
    w.page.on("console", on_console)
    yield w
    context.close()
    # Whatever a test did: no script opened a dialog, nothing was fetched from another origin,
    # and nothing the page tried was blocked by the Content-Security-Policy.
    assert w.dialogs == [] and w.elsewhere == [] and w.errors == []


def log_in(page: Any, stack: Stack, name: str = "alice") -> None:
    page.goto(stack.admin + "/console")
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sent(sink: Sink, path: str, marker: str) -> list[Any]:
    token = quote(marker, safe="").encode()
    return [r for r in sink.at(path) if token in r.body or marker.encode() in r.body]


# -- the flows ---------------------------------------------------------------------------------


def test_closed_until_login_then_csrf_guards_every_change(watched: Watched, stack: Stack) -> None:
    page = watched.page
    response = page.goto(stack.admin + "/console/events")
    assert response.status == 401
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    # Only the login form: no navigation, no data, one form.
    expect(page.locator("form")).to_have_count(1)
    expect(page.get_by_role("navigation")).to_have_count(0)
    for path in ("/console", "/admin/events", "/metrics"):
        assert stack.status(stack.public + path) == 404, path

    log_in(page, stack)
    expect(page.get_by_text("Signed in as alice")).to_be_visible()
    # A POST that does not come from a console form (no CSRF token) is refused, nothing changes.
    refused = page.request.post(stack.admin + "/console/destinations/crm/pause", form={})
    assert refused.status == 403 and "CSRF" in refused.text()
    destinations = stack.admin_get("/admin/destinations")["destinations"]
    assert not any(d["paused"] for d in destinations)

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    assert page.goto(stack.admin + "/console").status == 401


def test_find_an_event_by_email_replay_it_and_pause_its_destination(
    watched: Watched, stack: Stack
) -> None:
    page = watched.page
    assert stack.post("/hooks/user", subscribe_body("ann@example.com")) == 200
    poll(lambda: len(sent(stack.sink, "/crm", "ann@example.com")) == 1, "the first delivery")
    log_in(page, stack)

    page.get_by_role("link", name="Events").click()
    page.get_by_label("Email").fill("ann@example.com")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.events tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ann@example.com")
    rows.first.locator("a").click()

    crm = page.locator('article.timeline[data-destination="crm"]')
    expect(crm.locator("tr.attempt")).to_have_count(1)
    expect(crm.locator("tr.attempt").first).to_contain_text("HTTP 200")
    # The replay's attempt takes a second, so the page first shows it under way...
    stack.sink.delay["/crm"] = 1.0
    page.get_by_role("button", name="Replay this event").click()
    expect(page.get_by_role("status").first).to_contain_text("requested by console:alice")
    expect(crm.locator(".delivery")).to_have_count(2)
    expect(crm.locator("tr.attempt")).to_have_count(1)
    # ...then the timeline refreshes itself (htmx, no reload) and the new attempt appears.
    expect(crm.locator("tr.attempt")).to_have_count(2, timeout=10_000)
    del stack.sink.delay["/crm"]
    assert sent(stack.sink, "/crm", "ann@example.com")[-1].headers["X-Relay-Replay"] == "1"
    page.emulate_media(color_scheme="dark")
    shot(page, "event")
    page.emulate_media(color_scheme="light")

    page.get_by_role("link", name="Overview").click()
    page.get_by_role("button", name="Pause crm").click()
    expect(page.get_by_role("status").first).to_contain_text("Paused crm")
    assert stack.post("/hooks/user", subscribe_body("bob@example.com")) == 200
    page.reload()
    row = page.locator("#destination-crm")
    expect(row.locator("td").nth(3)).to_have_text("1")  # held while paused
    assert sent(stack.sink, "/crm", "bob@example.com") == []
    page.get_by_role("button", name="Resume crm").click()
    expect(page.get_by_role("status").first).to_contain_text("Resumed crm: 1 held")
    poll(lambda: len(sent(stack.sink, "/crm", "bob@example.com")) == 1, "the held delivery")


def test_cancel_a_running_replay_then_discard_what_it_left_waiting(
    watched: Watched, stack: Stack
) -> None:
    page = watched.page
    for batch in range(2):  # more than a replay does inside its request (500)
        events = [
            {"event": "send", "ts": 1420303407, "_id": f"bulk-{batch}-{n}",
             "msg": {"email": f"bulk{batch}.{n}@example.com"}}
            for n in range(300)
        ]  # fmt: skip
        body = urlencode({"mandrill_events": json.dumps(events)}).encode()
        assert stack.post("/hooks/mandrill", body) == 200
    started = stack.admin_post(
        "/admin/replay",
        {"filter": {"inbound": "transactional"}, "destinations": ["bulk"]},
        operator="bob",
    )
    replay_id = started["replay_id"]
    assert started["state"] == "running"

    log_in(page, stack)
    page.get_by_role("link", name="Replays").click()
    row = page.locator(f'tr[data-replay="{replay_id}"]')
    expect(row).to_contain_text("running")
    expect(row).to_contain_text("bob")
    row.get_by_role("link", name=f"#{replay_id}").click()
    page.get_by_role("link", name="Cancel this replay…").click()
    # A confirmation first: what cancelling stops, and what it leaves.
    expect(page.get_by_role("heading", name=f"Cancel replay #{replay_id}?")).to_be_visible()
    assert stack.admin_get(f"/admin/replays/{replay_id}")["state"] == "running"
    page.get_by_role("button", name=f"Cancel replay #{replay_id}").click()
    expect(page.get_by_role("status").first).to_contain_text("Cancelled by console:alice")
    expect(page.locator("#progress")).to_contain_text("cancelled")
    assert stack.admin_get(f"/admin/replays/{replay_id}")["cancelled_by"] == "console:alice"

    page.get_by_role("link", name="Discard its waiting deliveries…").click()
    dry_run = page.locator("#dry-run")
    expect(dry_run).to_contain_text("waiting deliveries match")
    counted = int(dry_run.locator("strong").inner_text())
    assert counted > 0
    assert stack.admin_get(f"/admin/replays/{replay_id}")["discarded"] == 0  # counting dropped none
    shot(page, "discard-dry-run")
    page.get_by_role("button", name=f"Discard {counted} deliveries").click()
    expect(page.get_by_role("status").first).to_contain_text("waiting deliveries: never sent")
    # The outcome refreshes itself: nothing waits any more (one in flight finishes first).
    expect(page.locator("#progress dd.waiting")).to_have_text("0", timeout=10_000)
    shown = stack.admin_get(f"/admin/replays/{replay_id}")
    assert shown["pending"] == 0 and counted - 2 <= shown["discarded"] <= counted
    shot(page, "replay-cancelled")

    # On the audit trail: bob started it, alice cancelled it and dropped what it left.
    page.get_by_role("link", name="Audit trail").click()
    for action, who in (("discard", "console:alice"), ("cancel", "console:alice")):
        expect(page.locator(f'tr[data-action="{action}"]').first).to_contain_text(who)
    expect(page.locator('tr[data-action="replay"]').first).to_contain_text("bob")


def test_dead_letters_resolve_retry_and_replay_then_the_audit_trail_names_the_operator(
    watched: Watched, stack: Stack
) -> None:
    page = watched.page
    stack.sink.on("/flaky", 500)
    emails = [f"dead{n}@example.com" for n in range(3)]
    for email in emails:
        assert stack.post("/hooks/admin", subscribe_body(email)) == 200

    def dead() -> int:
        page_ = stack.admin_get("/admin/deliveries?state=dead&destination=flaky")
        return len(page_["deliveries"])

    poll(lambda: dead() == 3, "three dead letters")
    log_in(page, stack)
    # From the store: the attempts of every relay process, with the last error.
    expect(page.locator("#destination-flaky td.last-failure")).to_contain_text("HTTP 500")
    expect(page.locator("#destination-flaky td.recent")).to_contain_text("0.0% 2xx")
    shot(page, "overview")
    page.get_by_role("link", name="Dead letters").click()
    total = page.locator('h3[data-destination="flaky"] .dead-total')
    expect(total).to_have_text("3 dead")
    expect(page.locator("table.groups").first).to_contain_text("HTTP 500")

    # Resolve one by hand (it needs no replay): the dead count drops.
    first = page.locator("table.dead tbody tr").first
    first.get_by_label("Reason to resolve").fill("sent by hand")
    first.get_by_role("button", name="Resolve").click()
    expect(page.get_by_role("status").first).to_contain_text("console:alice: sent by hand")
    expect(total).to_have_text("2 dead")
    expect(page.locator("table.dead tbody tr")).to_have_count(2)
    shot(page, "dead-letters")

    # Retry one now: a new delivery, whose attempt appears on its event's timeline.
    stack.sink.on("/flaky", 200)
    before = len(stack.sink.at("/flaky"))
    page.locator("table.dead tbody tr").first.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status").first).to_contain_text("again as delivery")
    flaky = page.locator('article.timeline[data-destination="flaky"]')
    expect(flaky.locator(".delivery")).to_have_count(2)
    expect(flaky.locator(".delivery").last.locator("tr.attempt")).to_contain_text(
        "HTTP 200", timeout=10_000
    )
    expect(flaky.locator(".delivery").first.locator(".state-resolved")).to_be_visible()
    page.emulate_media(color_scheme="dark")
    shot(page, "event-retried")
    page.emulate_media(color_scheme="light")
    assert len(stack.sink.at("/flaky")) == before + 1

    # "Replay these" counts the one dead letter left, not the resolved ones.
    page.get_by_role("link", name="Dead letters").click()
    expect(total).to_have_text("1 dead")
    page.get_by_role("link", name="Replay these dead letters to flaky").click()
    expect(page.locator("#dry-run")).to_contain_text("Dry run: 1 event matches")
    expect(page.locator("#dry-run")).to_contain_text("flaky: 1")
    shot(page, "dry-run")
    assert len(stack.sink.at("/flaky")) == before + 1  # counting sent nothing
    page.get_by_role("button", name="Replay 1 event").click()
    expect(page.get_by_role("heading", name="Replay #")).to_be_visible()
    expect(page.locator("#progress dd.created")).to_have_text("1")
    expect(page.locator("#progress dd.delivered")).to_have_text("1", timeout=10_000)
    poll(lambda: len(stack.sink.at("/flaky")) == before + 2, "the replayed dead letter")
    assert dead() == 0

    # The audit trail: every action above, with who did it.
    page.get_by_role("link", name="Audit trail").click()
    for action in ("replay", "retry", "resolve"):
        expect(page.locator(f'tr[data-action="{action}"]').first).to_contain_text(
            "console:alice"
        )
    shot(page, "audit")
    page.get_by_label("Action").select_option("resolve")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table.audit tbody tr")).to_have_count(1)
    expect(page.locator("table.audit tbody tr")).to_contain_text("sent by hand")


HOSTILE = {
    "script": "<script>alert(1)</script>",
    "img": '"><img src=x onerror=alert(1)>',
    "js_link": '<a href="javascript:alert(1)">click me</a>',
    "fetch": f'<img src="http://{ATTACKER}/pixel.gif">',
}


def test_hostile_webhook_content_is_shown_as_text_and_runs_nothing(
    watched: Watched, stack: Stack
) -> None:
    page = watched.page
    email = HOSTILE["img"] + "@example.com"
    audience = urlencode(
        {
            "type": "subscribe",
            "fired_at": "2026-11-02 10:00:00",
            "data[email]": email,
            "data[list_id]": "javascript:alert(1)",
            "data[merges][FNAME]": HOSTILE["script"],
            "data[merges][LNAME]": HOSTILE["js_link"],
            "data[merges][WEBSITE]": HOSTILE["fetch"],
        }
    ).encode()
    headers = {"X-Evil": HOSTILE["script"], "X-Link": "javascript:alert(1)"}
    assert stack.post("/hooks/user", audience, headers) == 200
    mandrill = [
        {
            "event": "send",
            "ts": 1420303407,
            "_id": "hostile-1",
            "msg": {
                "email": HOSTILE["script"] + "@example.com",
                "subject": HOSTILE["img"],
                "html": HOSTILE["script"] + HOSTILE["fetch"] + HOSTILE["js_link"],
                "metadata": {"note": HOSTILE["img"]},
            },
        }
    ]
    body = urlencode({"mandrill_events": json.dumps(mandrill)}).encode()
    assert stack.post("/hooks/mandrill", body) == 200

    log_in(page, stack)
    page.get_by_role("link", name="Events").click()
    expect(page.locator("table.events")).to_contain_text(email)
    expect(page.locator("table.events")).to_contain_text(HOSTILE["script"] + "@example.com")
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Search").click()
    page.locator("table.events tbody tr a").first.click()
    # Shown as text (inside the parsed JSON, quotes are escaped: hence the fragments).
    for text in (HOSTILE["script"], email, "javascript:alert(1)", "click me</a>", ATTACKER):
        expect(page.locator("main").get_by_text(text).first).to_be_attached()
    _assert_inert(page)

    page.get_by_role("link", name="Events").click()
    page.get_by_label("Email").fill(HOSTILE["script"] + "@example.com")
    page.get_by_role("button", name="Search").click()
    page.locator("table.events tbody tr a").first.click()
    expect(page.locator("main")).to_contain_text("hostile-1")
    for text in (HOSTILE["script"] + "@example.com", "onerror=alert(1)>", ATTACKER):
        expect(page.locator("main").get_by_text(text).first).to_be_attached()
    _assert_inert(page)
    shot(page, "hostile")
    page.goto(stack.admin + "/console/events")
    _assert_inert(page)


def _assert_inert(page: Any) -> None:
    """Nothing from a webhook became an element: no image, no link to javascript:, no inline
    script, and the only scripts are relay's own."""
    assert page.locator("main img").count() == 0
    assert page.locator('a[href^="javascript:" i]').count() == 0
    assert page.locator("script:not([src])").count() == 0
    sources = page.locator("script").evaluate_all("els => els.map(e => e.getAttribute('src'))")
    assert all(s.startswith("/console/static/") for s in sources), sources
