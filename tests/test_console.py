"""The operator console over real HTTP (no browser): who gets in, CSRF, headers, and that its
actions call the same Control as the admin API.

The browser flows (clicking through, hostile bodies staying inert) are in test_console_browser.py.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import aiohttp
import pytest

from relay.config import ConfigError, parse_config
from relay.model import AttemptRecord, DeliveryListing, DeliveryRecord, DeliveryState
from relay.server.console import session, views
from relay.server.console.render import CONTENT_SECURITY_POLICY
from tests.support import (
    ADMIN_TABLE,
    ADMIN_TOKEN,
    RelayFactory,
    RelayUnderTest,
    Sink,
    admin_call,
    config_text,
    destination,
    subscribe_body,
    wait_until,
)

TEMPLATES = Path(__file__).resolve().parents[1] / "relay" / "server" / "console" / "templates"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def _relay(
    start_relay: RelayFactory, tmp_path: Path, sink: Sink, admin_listen: bool = True
) -> RelayUnderTest:
    extra = ADMIN_TABLE + ('listen = "127.0.0.1:8081"\n' if admin_listen else "")
    text = config_text(
        tmp_path / "relay.db",
        destinations=destination("crm", sink.url("/crm")),
        extra=extra,
    )
    return await start_relay(text)


def _browser() -> aiohttp.ClientSession:
    # Like a browser: keeps cookies for an IP address, does not follow redirects by itself.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(client: aiohttp.ClientSession, relay: RelayUnderTest, name: str = "alice") -> str:
    """Log in through the form; the CSRF token of the new session."""
    async with client.get(relay.admin_url("/console/login")) as r:
        form_csrf = CSRF.search(await r.text())
    assert form_csrf is not None
    form = {"operator": name, "token": ADMIN_TOKEN, "csrf": form_csrf[1], "next": "/console"}
    async with client.post(
        relay.admin_url("/console/login"), data=form, allow_redirects=False
    ) as r:
        assert r.status == 303, await r.text()
    async with client.get(relay.admin_url("/console")) as r:
        assert r.status == 200
        found = CSRF.search(await r.text())
    assert found is not None
    return found[1]


async def _event(relay: RelayUnderTest, sink: Sink, email: str) -> str:
    status, _ = await relay.post("/hooks/user", subscribe_body(email))
    assert status == 200
    sent = email.replace("@", "%40").encode()
    await wait_until(lambda: any(sent in r.body for r in sink.at("/crm")), what="the delivery")
    _, page = await admin_call(relay, "GET", "/admin/events?email=" + email)
    return str(page["events"][0]["id"])


async def _get(
    relay: RelayUnderTest, headers: dict[str, str], path: str = "/console"
) -> tuple[int, str]:
    """GET a console page with these headers alone (no cookie jar): its status and text."""
    assert relay.session is not None
    async with relay.session.get(relay.admin_url(path), headers=headers) as r:
        return r.status, await r.text()


def _assert_secured(response: aiohttp.ClientResponse) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    assert csp == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers.get("X-Frame-Options") == "DENY"
    assert response.headers.get("X-Content-Type-Options") == "nosniff"


# -- where the console is --------------------------------------------------------------------


async def test_without_admin_listen_the_console_shares_the_main_address(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink, admin_listen=False)
    assert relay.admin_server is None
    async with _browser() as client:
        await _login(client, relay)
        async with client.get(relay.url("/console/events")) as r:
            assert r.status == 200


def test_inbound_path_may_not_take_the_console() -> None:
    inbound = '[[inbound]]\nname = "a"\npath = "/console/x"\nkind = "mailchimp"\nsource = "u"\n'
    with pytest.raises(ConfigError, match="collides with relay's own endpoints"):
        parse_config(inbound, {})


# -- who gets in -----------------------------------------------------------------------------


async def test_without_login_every_console_page_is_the_login_form(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    event_id = await _event(relay, sink, "hidden@example.com")
    async with _browser() as client:
        for path in (
            "/console",
            "/console/events?type=subscribe",
            f"/console/events/{event_id}",
            f"/console/events/{event_id}/body",
            "/console/dead",
            "/console/replays",
            "/console/replays/1",
            "/console/replays/1/cancel",
            "/console/deliveries/1",
            "/console/discard?destination=crm",
            "/console/audit",
            "/console/no-such-page",
        ):
            async with client.get(relay.admin_url(path)) as r:
                text = await r.text()
                assert r.status == 401, path
                _assert_secured(r)
                assert 'action="/console/login"' in text
                assert "hidden@example.com" not in text  # nothing stored is shown
        async with client.post(relay.admin_url("/console/destinations/crm/pause")) as r:
            assert r.status == 401
        async with client.get(relay.admin_url("/console/static/console.css")) as r:
            assert r.status == 200
            _assert_secured(r)
    assert await relay.relay.store.paused_destinations() == frozenset()


async def test_login_gives_a_strict_httponly_cookie_that_does_not_hold_the_token(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    async with _browser() as client:
        async with client.get(relay.admin_url("/console/login")) as r:
            found = CSRF.search(await r.text())
        assert found is not None
        url = relay.admin_url("/console/login")
        wrong = {"operator": "mallory", "token": "guess", "csrf": found[1]}
        async with client.post(url, data=wrong, allow_redirects=False) as r:
            page = await r.text()
            assert r.status == 401 and "not the admin token" in page
            assert session.SESSION_COOKIE not in r.cookies
        found = CSRF.search(page)  # the form shown again carries a fresh token
        assert found is not None
        right = {
            "operator": "alice",
            "token": ADMIN_TOKEN,
            "csrf": found[1],
            "next": "/console/dead",
        }
        async with client.post(url, data=right, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/dead"
            header = next(
                h for h in r.headers.getall("Set-Cookie") if h.startswith(session.SESSION_COOKIE)
            )
        assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/console" in header
        assert ADMIN_TOKEN not in header
        async with client.get(relay.admin_url("/console")) as r:
            text = await r.text()
            assert r.status == 200 and "alice" in text
            _assert_secured(r)
            csrf = CSRF.search(text)
        assert csrf is not None
        # Logging out ends the session in this browser.
        async with client.post(
            relay.admin_url("/console/logout"), data={"csrf": csrf[1]}, allow_redirects=False
        ) as r:
            assert r.status == 303
        async with client.get(relay.admin_url("/console")) as r:
            assert r.status == 401


async def test_login_needs_the_login_forms_csrf_token(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    async with _browser() as client:
        form = {"operator": "alice", "token": ADMIN_TOKEN}
        async with client.post(
            relay.admin_url("/console/login"), data=form, allow_redirects=False
        ) as r:
            assert r.status == 403
            assert session.SESSION_COOKIE not in r.cookies


async def test_forged_sessions_are_refused(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    now = time.time()
    real = session.issue(session.session_key(ADMIN_TOKEN), "alice", now)
    body, _, signature = real.partition(".")
    forged = [
        session.issue(session.session_key("another-token"), "alice", now),
        session.issue(session.session_key(ADMIN_TOKEN), "alice", now - 2 * 86400),
        session._b64(b'{"sid":"x","op":"mallory","exp":9999999999}') + "." + signature,
        body + "." + signature[:-2],
        "alice",
    ]
    for cookie in forged:
        status, _ = await _get(relay, {"Cookie": f"{session.SESSION_COOKIE}={cookie}"})
        assert status == 401, cookie
    status, _ = await _get(relay, {"Cookie": f"{session.SESSION_COOKIE}={real}"})
    assert status == 200


async def test_bearer_token_opens_the_console(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    status, page = await _get(relay, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 200 and "Destinations" in page
    status, _ = await _get(relay, {"Authorization": "Bearer wrong"})
    assert status == 401


async def test_overview_counts_each_inbounds_events_of_the_last_hour(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    for n in range(3):
        assert (await relay.post("/hooks/user", subscribe_body(f"h{n}@example.com")))[0] == 200
    _, page = await _get(relay, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    counts = dict(
        re.findall(r'data-inbound="([\w-]+)">.*?class="num last-hour">(\d+)<', page, re.S)
    )
    assert counts == {"audience-user": "3", "audience-admin": "0"}


async def test_console_is_closed_without_a_configured_token(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(config_text(tmp_path / "relay.db"))
    assert relay.session is not None
    async with relay.session.get(relay.url("/console/login")) as r:
        assert r.status == 200 and "The console is closed" in await r.text()
    async with relay.session.post(
        relay.url("/console/login"), data={"operator": "a", "token": ""}
    ) as r:
        assert r.status == 401


# -- CSRF and actions ------------------------------------------------------------------------


async def test_state_changing_requests_without_the_csrf_token_are_refused(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    event_id = await _event(relay, sink, "csrf@example.com")
    store = relay.relay.store
    async with _browser() as client:
        csrf = await _login(client, relay)
        attempts = [
            ("/console/destinations/crm/pause", {}),
            ("/console/destinations/crm/pause", {"csrf": "not-the-token"}),
            ("/console/destinations/crm/pause", {"csrf": session.csrf_token(b"k" * 32, "x")}),
            (f"/console/events/{event_id}/replay", {}),
            ("/console/replay", {"email": "csrf@example.com"}),
            ("/console/replays/1/cancel", {}),
            ("/console/deliveries/1/resolve", {"reason": "no token"}),
            ("/console/deliveries/1/retry", {}),
            ("/console/discard", {"destination": "crm"}),
            ("/console/destinations/crm/reset", {}),
        ]
        for path, form in attempts:
            async with client.post(relay.admin_url(path), data=form, allow_redirects=False) as r:
                assert r.status == 403, (path, form)
                _assert_secured(r)
                assert "CSRF" in await r.text()
        # A bearer client needs the token as well (its pages carry it).
        assert relay.session is not None
        async with relay.session.post(
            relay.admin_url("/console/destinations/crm/pause"),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 403
        assert await store.paused_destinations() == frozenset()
        detail = await store.get_event(event_id)
        assert detail is not None and len(detail.deliveries) == 1
        assert (await store.list_audit(10)).entries == ()  # nothing was done, by anyone

        async with client.post(
            relay.admin_url("/console/destinations/crm/pause"),
            data={"csrf": csrf},
            allow_redirects=False,
        ) as r:
            assert r.status == 303
        assert await store.paused_destinations() == frozenset({"crm"})
        async with client.get(relay.admin_url(r.headers["Location"])) as r:
            assert "Paused crm" in await r.text()


async def test_console_replay_records_the_logged_in_operator(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    event_id = await _event(relay, sink, "again@example.com")
    async with _browser() as client:
        csrf = await _login(client, relay, name="alice")
        async with client.post(
            relay.admin_url(f"/console/events/{event_id}/replay"),
            data={"csrf": csrf},
            allow_redirects=False,
        ) as r:
            assert r.status == 303
            location = r.headers["Location"]
    replay_id = int(re.search(r"replay=(\d+)", location)[1])  # type: ignore[index]
    status, record = await admin_call(relay, "GET", f"/admin/replays/{replay_id}")
    assert status == 200 and record["requested_by"] == "console:alice"
    await wait_until(lambda: len([r for r in sink.at("/crm") if b"again%40" in r.body]) == 2)
    assert sink.at("/crm")[-1].headers["X-Relay-Replay"] == "1"


async def test_bulk_replay_counts_first_and_sends_only_on_confirm(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    sink.on("/crm", 500)
    text = config_text(
        tmp_path / "relay.db",
        destinations=destination("crm", sink.url("/crm"), retry={"max_attempts": 1}),
        extra=ADMIN_TABLE,
    )
    relay = await start_relay(text)
    for n in range(3):
        assert (await relay.post("/hooks/user", subscribe_body(f"d{n}@example.com")))[0] == 200
    store = relay.relay.store
    await wait_until(lambda: _dead_count(relay), what="three dead letters")
    async with _browser() as client:
        csrf = await _login(client, relay)
        async with client.get(relay.url("/console/dead")) as r:
            page = await r.text()
        assert "HTTP 500" in page and "Replay these dead letters to crm" in page
        preview = "/console/replay?state=dead&destination=crm&to=crm"
        async with client.get(relay.url(preview)) as r:
            page = await r.text()
        assert r.status == 200
        assert re.search(r"<strong>3</strong> events match", page), page
        assert await store.get_replay(1) is None  # the dry run sent nothing
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
        assert fields["state"] == "dead" and fields["until"].endswith("Z")
        sink.on("/crm", 200)
        async with client.post(
            relay.url("/console/replay"), data=fields, allow_redirects=False
        ) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/console/replays/1"
        assert fields["csrf"] == csrf
    record = await store.get_replay(1)
    assert record is not None and record.created == 3 and record.requested_by == "console:alice"
    await wait_until(lambda: len(sink.at("/crm")) == 6)


async def _dead_count(relay: RelayUnderTest) -> bool:
    page = await relay.relay.store.list_deliveries(DeliveryState.DEAD, "crm", 10)
    return len(page.deliveries) == 3


async def test_webhook_markup_is_escaped_in_every_page(
    tmp_path: Path, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await _relay(start_relay, tmp_path, sink)
    hostile = '"><img src=x onerror=alert(1)>@example.com'
    body = subscribe_body(hostile) + b"&data[merges][FNAME]=%3Cscript%3Ealert(1)%3C/script%3E"
    status, _ = await relay.post(
        "/hooks/user", body, headers={"X-Evil": "<script>alert(2)</script>"}
    )
    assert status == 200
    _, page = await admin_call(relay, "GET", "/admin/events")
    event_id = page["events"][0]["id"]
    async with _browser() as client:
        await _login(client, relay)
        async with client.get(relay.admin_url(f"/console/events/{event_id}")) as r:
            detail = await r.text()
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in detail  # the header, shown as text
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;@example.com" in detail
        for path, params in (
            (f"/console/events/{event_id}", {}),
            (f"/console/events/{event_id}/deliveries", {}),
            ("/console/events", {}),
            ("/console/events", {"email": hostile}),
            ("/console/replay", {"email": hostile}),
        ):
            async with client.get(relay.admin_url(path), params=params) as r:
                text = await r.text()
            assert r.status == 200, (path, text)
            assert "<img src=x" not in text and "<script>alert" not in text, path


# -- pure parts ------------------------------------------------------------------------------


def test_a_delivery_problem_is_its_last_error_said_once() -> None:
    dead = _dead(1, "crm", "HTTP 500: upstream down", 500).delivery
    assert views.delivery_problem(dead) == "HTTP 500: upstream down"
    assert views.delivery_problem(_dead(2, "crm", None, 503).delivery) == "HTTP 503"
    pruned = dataclasses.replace(_dead(3, "crm", None, None).delivery, dead_reason="pruned")
    assert views.delivery_problem(pruned) == "pruned"


@pytest.mark.parametrize(
    ("action", "target", "link"),
    [("replay", "7", "/console/replays/7"), ("cancel", "7", "/console/replays/7"),
     ("resolve", "12", "/console/deliveries/12"), ("retry", "12", "/console/deliveries/12"),
     ("pause", "crm", "/console#destination-crm"), ("discard", None, None),
     ("prune", None, None), ("resolve", "x", None)],
)  # fmt: skip
def test_audit_targets_link_to_what_they_name(
    action: str, target: str | None, link: str | None
) -> None:
    assert views.audit_target(action, target) == link


def test_an_actions_notice_is_not_part_of_the_address_it_returns_to() -> None:
    query = {"destination": "crm", "done": "resolve", "delivery": "4", "cursor": "9"}
    assert views.here("/console/dead", query) == "/console/dead?destination=crm&cursor=9"
    assert views.with_notice("/console/dead", done="discard", n=3) == (
        "/console/dead?done=discard&n=3"
    )


def test_templates_never_mark_webhook_data_as_markup() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        for banned in ("|safe", "| safe", "Markup", "autoescape false", "{% autoescape"):
            assert banned not in text, f"{template.name} uses {banned}"
    source = (TEMPLATES.parent).glob("*.py")
    for module in source:
        assert "Markup" not in module.read_text(), module.name


def test_session_cookie_round_trips_and_rejects_tampering() -> None:
    key = session.session_key("token")
    cookie = session.issue(key, "alice", now=1000.0, sid="s1")
    assert session.read(key, cookie, now=1001.0) == session.Session(
        "s1", "alice", 1000.0 + session.SESSION_SECONDS
    )
    assert session.read(key, cookie, now=1000.0 + session.SESSION_SECONDS) is None
    assert session.read(session.session_key("token2"), cookie, now=1001.0) is None
    assert "token" not in cookie.split(".")[0] or b"token" not in session._unb64(
        cookie.split(".")[0]
    )
    for bad in ("", ".", "a.b.c", "!!!.???", cookie + "x", "x" + cookie):
        assert session.read(key, bad, now=1001.0) is None
    token = session.csrf_token(key, "s1")
    assert session.csrf_valid(key, "s1", token)
    assert not session.csrf_valid(key, "s2", token)
    assert not session.csrf_valid(key, "s1", "")
    assert not session.csrf_valid(key, "s1", None)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/console/events?email=a", "/console/events?email=a"),
        ("/console", "/console"),
        ("https://evil.example/console", "/console"),
        ("//evil.example/console", "/console"),
        ("/admin/events", "/console"),
        ("/console\\@evil", "/console"),
        (None, "/console"),
    ],
)
def test_login_only_returns_to_console_pages(target: str | None, expected: str) -> None:
    assert session.safe_next(target) == expected


@pytest.mark.parametrize(
    ("name", "ok"),
    [("alice", True), ("", False), ("a" * 65, False), ("bob\nadmin", False), ("Zoë", True)],
)
def test_operator_names(name: str, ok: bool) -> None:
    assert (session.operator_problem(name) is None) == ok


def test_body_view_shows_exact_text_or_marks_odd_bytes() -> None:
    assert views.body_view(b"a=1&b=%3Cx%3E") == views.BodyView("a=1&b=%3Cx%3E", 13, True, False)
    odd = views.body_view(b"caf\xe9")
    assert odd.text == "caf\\xe9" and not odd.utf8
    cut = views.body_view("é".encode() * 3, limit=5)  # the cut splits the third character
    assert cut == views.BodyView("éé", 6, True, True)


def _dead(id: int, destination: str, error: str | None, status: int | None) -> DeliveryListing:
    record = DeliveryRecord(
        id, f"E{id}", destination, DeliveryState.DEAD, 3, None, 0.0, float(id), None, status,
        error, None,
    )  # fmt: skip
    return DeliveryListing(record, "in", "user", "subscribe", None, 0.0)


def test_dead_letters_group_by_destination_then_error() -> None:
    grouped = views.dead_groups(
        [
            _dead(1, "crm", None, 500),
            _dead(2, "crm", "cannot connect: refused", None),
            _dead(3, "crm", None, 500),
            _dead(4, "analytics", None, 410),
        ]
    )
    assert [(name, [(g.error, g.count) for g in gs]) for name, gs in grouped] == [
        ("analytics", [("HTTP 410", 1)]),
        ("crm", [("HTTP 500", 2), ("cannot connect: refused", 1)]),
    ]
    assert grouped[1][1][0].event_ids == ["E1", "E3"] and grouped[1][1][0].latest_at == 3.0


def test_timelines_keep_each_destination_in_delivery_order() -> None:
    a = _dead(5, "crm", None, 500).delivery
    b = _dead(2, "crm", None, 500).delivery
    c = _dead(3, "x", None, 500).delivery
    assert [(t.destination, [d.id for d in t.deliveries]) for t in views.timelines([a, b, c])] == [
        ("crm", [2, 5]),
        ("x", [3]),
    ]
    assert AttemptRecord  # the attempt rows are printed as stored


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "\N{EN DASH}"), (5, "5 s"), (600, "10 min"), (3 * 3600 + 300, "3 h 5 min"),
     (3 * 86400, "3 d 0 h")],
)  # fmt: skip
def test_ages_read_at_a_glance(seconds: float | None, text: str) -> None:
    assert views.age_text(seconds) == text
