"""Configuration: the contract's TOML loads, and every problem is reported with its key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import BreakerPolicy, ConfigError, RateLimit, parse_config
from relay.model import InboundKind

CONTRACT_EXAMPLE = """
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 10485760

[storage]
url = "sqlite:///data/relay.db"

[admin]
token = "${RELAY_ADMIN_TOKEN}"

[[inbound]]
name = "audience-user"
path = "/hooks/mailchimp/audience-user"
kind = "mailchimp"
secret = "${MC_HOOK_SECRET}"
source = "user"

[[destination]]
name = "crm"
url = "http://crm.internal/webhooks/mailchimp"
types = ["subscribe", "unsubscribe"]
sources = ["user", "admin"]
timeout = 10.0
headers = { Authorization = "Bearer ${CRM_TOKEN}" }
rate = 50
[destination.breaker]
failures = 20
probe_interval = 1.0
max_probe_interval = 60.0
[destination.retry]
max_attempts = 10
initial_delay = 5.0
max_delay = 3600.0
"""
ENV = {"RELAY_ADMIN_TOKEN": "adm", "MC_HOOK_SECRET": "hook", "CRM_TOKEN": "crm"}


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, ENV if env is None else env)
    return info.value.problems


def test_contract_example_loads_with_environment_substitution() -> None:
    s = parse_config(CONTRACT_EXAMPLE, ENV)
    assert (s.server.host, s.server.port, s.server.max_body_bytes) == ("127.0.0.1", 8080, 10485760)
    assert s.admin.token == "adm"
    (inbound,) = s.inbounds
    assert (inbound.kind, inbound.secret, inbound.source) == (InboundKind.MAILCHIMP, "hook", "user")
    (crm,) = s.destinations
    assert crm.types == ("subscribe", "unsubscribe")
    assert crm.sources == ("user", "admin")
    assert crm.headers == (("Authorization", "Bearer crm"),)
    assert (crm.retry.max_attempts, crm.retry.initial_delay, crm.retry.max_delay) == (
        10,
        5.0,
        3600.0,
    )
    assert crm.retry.max_age is None
    assert crm.rate_limit == RateLimit(rate=50.0, burst=5.0)
    assert crm.breaker == BreakerPolicy(failures=20, probe_interval=1.0, max_probe_interval=60.0)
    aged = parse_config(CONTRACT_EXAMPLE + "max_age = 86400\n", ENV)
    assert aged.destinations[0].retry.max_age == 86400.0


def test_missing_environment_variable_names_key_and_variable() -> None:
    env = dict(ENV)
    del env["CRM_TOKEN"]
    assert problems(CONTRACT_EXAMPLE, env) == [
        "destination[0].headers.Authorization: environment variable CRM_TOKEN is not set"
        " (destination crm)"
    ]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            '[[destination]]\nname = "a"\nurl = "ftp://x"',
            "destination[0].url: not an http(s) URL (destination a)",
        ),
        ('[[destination]]\nname = "a"', "destination[0].url: is required (destination a)"),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\ntimeout = "10"',
            "destination[0].timeout: must be a number (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\ntimeout = 0',
            "destination[0].timeout: must be greater than 0 (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\ntypes = "subscribe"',
            "destination[0].types: must be a list of non-empty strings (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\ncolour = 1',
            "destination[0].colour: unknown key (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\n[destination.retry]\nmax_attempts = 0',
            "destination[0].retry.max_attempts: must be greater than 0 (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\n[destination.retry]\ninitial_delay = 10.0\nmax_delay = 1.0',
            "destination[0].retry.max_delay: must be at least initial_delay (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\nformat = "xml"',
            "destination[0].format: must be one of raw, json (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\nordering = "email"',
            "destination[0].ordering: must be one of none, subscriber (destination a)",
        ),
        (
            '[server]\nlisten = "8080"',
            "server.listen: must be host:port with a port from 1 to 65535",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\n[destination.retry]\nmax_age = 0',
            "destination[0].retry.max_age: must be greater than 0 (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\nheaders = { content-type = "x/y" }',
            "destination[0].headers.content-type: is set by relay on every delivery (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\nheaders = { X-Relay-Attempt = "1" }',
            "destination[0].headers.X-Relay-Attempt: is set by relay on every delivery (destination a)",
        ),
        (
            '[storage]\nurl = "sqlite:///:memory:"',
            "storage.url: an in-memory database cannot be used: relay's connections would not share it",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://[bad/x"',
            "destination[0].url: not an http(s) URL (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://crm:99999/x"',
            "destination[0].url: not an http(s) URL (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://crm:abc/x"',
            "destination[0].url: not an http(s) URL (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://:80/x"',
            "destination[0].url: not an http(s) URL (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://cr m/x"',
            "destination[0].url: not an http(s) URL (destination a)",
        ),
        (
            '[[destination]]\nname = "a"\nurl = "http://x"\nheaders = { A = "b\\r\\nX-Evil: 1" }',
            "destination[0].headers.A: must not contain control characters (destination a)",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "/hooks/{a}"',
            "inbound[0].path: may hold only URL path characters"
            " (letters, digits and -._~!$&'()*+,;=:@%/) (inbound a)",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "/hooks/a"\nsource = "user\\r\\nX-Injected: 1"',
            "inbound[0].source: must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (inbound a)",
        ),
        (
            '[[inbound]]\nname = "a\\n"\npath = "/hooks/a"',
            "inbound[0].name: must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
        ),
        ("[server]\nmax_body_bytes = -1", "server.max_body_bytes: must be greater than 0"),
        ("[server]\nread_timeout = 0", "server.read_timeout: must be greater than 0"),
        ("[server]\nheader_timeout = 0", "server.header_timeout: must be greater than 0"),
        ("[server]\nmax_connections = 0", "server.max_connections: must be greater than 0"),
        ("[server]\nworkers = 0", 'server.workers: must be a whole number from 1 to 1024, or "auto"'),
        ('[server]\nworkers = "all"', 'server.workers: must be a whole number from 1 to 1024, or "auto"'),
        ("[server]\nworkers = 2.5", 'server.workers: must be an integer or a string'),
        ("[storage]\nmax_size_mb = 0", "storage.max_size_mb: must be greater than 0"),
        ('[storage]\nmax_size_mb = "1GB"', "storage.max_size_mb: must be a number"),
        (
            '[storage]\nurl = "mysql://x"',
            "storage.url: must be sqlite:///PATH (sqlite:////abs/path for an absolute path) or postgresql://user@host:5432/db",
        ),
        (
            '[storage]\nurl = "postgresql://relay@db"',
            "storage.url: names no database (postgresql://user@host:5432/DBNAME)",
        ),
        (
            '[storage]\nurl = "postgresql://relay@db:port/relay"',
            "storage.url: not a PostgreSQL URL (postgresql://user@host:5432/db)",
        ),
        (
            '[storage]\nsynchronous = "FULL"',
            "storage.synchronous: moved to [storage.sqlite] (storage.sqlite.synchronous)",
        ),
        ("[storage.sqlite]\nbusy_timeout = -1", "storage.sqlite.busy_timeout: must be 0 or more"),
        ("[storage.postgresql]\npool_size = 0", "storage.postgresql.pool_size: must be greater than 0"),
        (
            '[storage.postgresql]\npassword_file = "/nonexistent/pw"',
            "storage.postgresql.password_file: cannot read /nonexistent/pw: No such file or directory",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "hooks"',
            "inbound[0].path: must be an absolute URL path without query, like /hooks/mailchimp (inbound a)",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "/admin/x"',
            "inbound[0].path: collides with relay's own endpoints (inbound a)",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "/h"\nkind = "sendgrid"',
            "inbound[0].kind: must be one of mailchimp, journey, mandrill (inbound a)",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "/h"\nkind = "journey"',
            "inbound[0].event_type: is required for kind journey (or set event_type_header) (inbound a)",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "/h"\nkind = "journey"\nevent_type = "j"\nevent_types = ["j.*"]',
            "inbound[0].event_types: only applies with event_type_header (kind journey) (inbound a)",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "/h"\nkind = "mandrill"\nmandrill_key = "k"',
            "inbound[0].public_url: is required with mandrill_key (the URL Mailchimp signs) (inbound a)",
        ),
        (
            '[[inbound]]\nname = "a b"\npath = "/h"',
            "inbound[0].name: must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
        ),
        (
            '[[inbound]]\nname = "a"\npath = "/h"\n[[inbound]]\nname = "a"\npath = "/g"',
            "inbound[1].name: duplicate name 'a'",
        ),
        ("unknown_section = 1", "unknown_section: unknown key"),
    ],
)
def test_each_problem_is_one_line_naming_the_key(snippet: str, expected: str) -> None:
    assert problems(snippet) == [expected]


KINDS = """
[[inbound]]
name = "a"
path = "/a"
kind = "mailchimp"
[[inbound]]
name = "j"
path = "/j"
kind = "journey"
event_type = "journey.x"
[[inbound]]
name = "m"
path = "/m"
kind = "mandrill"
[[inbound]]
name = "own"
path = "/own"
max_body_bytes = 3000000
"""


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        # Audience and journey bodies are kilobytes; a Mandrill batch takes [server]'s limit.
        ("", {"a": 262144, "j": 262144, "m": 10485760, "own": 3000000}),
        ("max_body_bytes = 100000", {"a": 100000, "j": 100000, "m": 100000, "own": 3000000}),
        ("max_body_bytes = 20971520", {"a": 262144, "j": 262144, "m": 20971520, "own": 3000000}),
    ],
)
def test_each_inbound_kind_has_a_body_limit_that_fits_it(
    server: str, expected: dict[str, int]
) -> None:
    s = parse_config(f"[server]\n{server}\n{KINDS}", {})
    assert {i.name: i.max_body_bytes for i in s.inbounds} == expected
    assert s.server.max_inflight_bytes == 134217728
    assert (s.server.max_connections, s.server.header_timeout) == (10000, 10.0)


@pytest.mark.parametrize(
    ("line", "expected"),
    [("", 1), ("workers = 3", 3), ('workers = "auto"', len(os.sched_getaffinity(0)))],
)
def test_workers_is_a_number_of_processes_or_one_per_core(line: str, expected: int) -> None:
    assert parse_config(f"[server]\n{line}\n", {}).server.workers == expected


def test_the_inflight_budget_must_hold_the_largest_body() -> None:
    assert problems(f"[server]\nmax_inflight_bytes = 10000000\n{KINDS}") == [
        "server.max_inflight_bytes: must be at least the largest max_body_bytes (10485760),"
        " or such a body could never be taken"
    ]


def test_several_problems_are_all_reported() -> None:
    found = problems('[server]\nlisten = "x"\n[[destination]]\nname = "a"\nurl = "nope"')
    assert len(found) == 2


def test_invalid_toml_is_one_line() -> None:
    (line,) = problems('[server]\nlisten = "x"\n[storage\n')
    assert line == (
        "config: line 3, column 9: invalid TOML: Expected ']' at the end of a table declaration"
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip


def test_check_config_cli_ok_and_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(CONTRACT_EXAMPLE.replace("${", "$${").replace("$${", "plain-"))
    result = _cli("check-config", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "1 inbound(s)" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[destination]]\nname = "crm"\nurl = "crm.internal"\n')
    result = _cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == "destination[0].url: not an http(s) URL (destination crm)"
    assert "Traceback" not in result.stderr
    result = _cli("check-config", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "relay.toml"
    result = _cli("check-config", "--config", str(example))
    assert result.returncode == 0, result.stderr


INBOUND = '[[inbound]]\nname = "in"\npath = "/hooks/in"\n'


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            '[server]\nlisen = "127.0.0.1:8080"',
            "server.lisen: unknown key (did you mean 'listen'?)",
        ),
        ('[storge]\nurl = "sqlite:///x.db"', "storge: unknown key (did you mean 'storage'?)"),
        (
            '[[destination]]\nname = "crm"\nurl = "http://x"\ntyeps = ["subscribe"]',
            "destination[0].tyeps: unknown key (did you mean 'types'?) (destination crm)",
        ),
        ("[server]\ncolour = 1", "server.colour: unknown key"),
    ],
)
def test_a_misspelt_key_gets_a_suggestion(snippet: str, expected: str) -> None:
    assert problems(INBOUND + snippet) == [expected]


def test_problems_name_the_table_by_its_name_and_keep_the_index_without_one() -> None:
    found = problems(
        INBOUND
        + '[[destination]]\nname = "crm"\nurl = "ftp://x"\n'
        + '[[destination]]\nurl = "ftp://y"\n'
        + '[[destination]]\nname = "bad name"\nurl = "http://z"\n'
    )
    assert found == [
        "destination[0].url: not an http(s) URL (destination crm)",
        "destination[1].name: is required",
        "destination[1].url: not an http(s) URL",
        "destination[2].name: must be 1-64 letters, digits, '_', '-' or '.', starting with a"
        " letter or digit",
    ]


def test_a_duplicate_name_is_reported_even_when_the_first_table_has_other_problems() -> None:
    found = problems(
        INBOUND
        + '[[destination]]\nname = "crm"\nurl = "ftp://x"\n'
        + '[[destination]]\nname = "crm"\nurl = "http://y"\n'
    )
    assert found == [
        "destination[0].url: not an http(s) URL (destination crm)",
        "destination[1].name: duplicate name 'crm'",
    ]


def test_a_missing_variable_is_reported_once_with_every_key_that_uses_it() -> None:
    found = problems(
        '[[inbound]]\nname = "a"\npath = "/a"\nsecret = "${HOOK}"\n'
        '[[inbound]]\nname = "b"\npath = "/b"\nsecret = "${HOOK}"\n'
        '[[destination]]\nname = "crm"\nurl = "${CRM_URL}"\n',
        {},
    )
    assert found == [
        "inbound[0].secret: environment variable HOOK is not set (inbound a);"
        " also used by inbound[1].secret",
        # Not also "not an http(s) URL": the empty value is the missing variable's doing.
        "destination[0].url: environment variable CRM_URL is not set (destination crm)",
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_refused(text: str) -> None:
    assert problems(text) == ["config: the file is empty: relay needs at least an [[inbound]]"]


def _warnings(text: str, env: dict[str, str] | None = None) -> tuple[str, ...]:
    return parse_config(text, ENV if env is None else env).warnings


def test_a_dollar_name_without_braces_is_a_warning_naming_the_fix() -> None:
    warned = _warnings(INBOUND + 'secret = "$MC_HOOK_SECRET"\n')
    assert warned == (
        "inbound[0].secret: $MC_HOOK_SECRET is used as written, not read from the environment;"
        " write ${MC_HOOK_SECRET} to read it (inbound in)",
    )
    header = '[[destination]]\nname = "crm"\nurl = "http://x"\nheaders = { A = "Bearer $TOKEN" }'
    assert _warnings(INBOUND + header) == (
        "destination[0].headers.A: $TOKEN is used as written, not read from the environment;"
        " write ${TOKEN} to read it (destination crm)",
    )
    for fine in ("pa$word", "${MC_HOOK_SECRET}", "k9#$xy", "cost: 5$"):
        assert _warnings(INBOUND + f'secret = "{fine}"\n') == (), fine


def test_a_types_filter_that_can_never_match_is_a_warning() -> None:
    crm = '[[destination]]\nname = "crm"\nurl = "http://x"\n'
    assert _warnings(INBOUND + crm + 'types = ["subscrbe", "unsubscribe"]\n') == (
        "destination[0].types: 'subscrbe' matches no event type relay makes, so it never"
        " matches (did you mean 'subscribe'?) (destination crm)",
    )
    # Globs, Mandrill's types and a journey's configured type all match something.
    journey = (
        '[[inbound]]\nname = "j"\npath = "/j"\nkind = "journey"\nevent_type = "journey.welcome"\n'
    )
    fine = 'types = ["sms_*", "hard_bounce", "blacklist.*", "journey.welcome", "unknown"]\n'
    assert _warnings(INBOUND + journey + crm + fine) == ()
    # A header the marketer sets may name any type: nothing can be called unmatchable.
    header = (
        '[[inbound]]\nname = "h"\npath = "/h"\nkind = "journey"\nevent_type_header = "X-Type"\n'
    )
    assert _warnings(INBOUND + header + crm + 'types = ["anything"]\n') == ()


def test_check_config_prints_warnings_and_still_passes(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(INBOUND + 'secret = "$MC_HOOK_SECRET"\n')
    result = _cli("check-config", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "warning: inbound[0].secret: $MC_HOOK_SECRET is used as written, not read from the"
        " environment; write ${MC_HOOK_SECRET} to read it (inbound in)\n"
    )
    assert result.stdout.startswith(f"{cfg}: ok: ")


def test_check_config_names_the_file_and_line_of_a_toml_error_and_refuses_an_empty_one(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(INBOUND + "source = user\n")
    result = _cli("check-config", "--config", str(broken))
    assert (result.returncode, result.stderr) == (
        2,
        f"{broken}: line 4, column 10: invalid TOML: Invalid value\n",
    )
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    result = _cli("check-config", "--config", str(empty))
    assert (result.returncode, result.stderr) == (
        2,
        f"{empty}: the file is empty: relay needs at least an [[inbound]]\n",
    )


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${X:-fallback}", {}, "fallback"),
        ("${X:-fallback}", {"X": ""}, "fallback"),
        ("${X:-fallback}", {"X": "set"}, "set"),
        ("a-${X:-}-b", {}, "a--b"),
    ],
)
def test_a_variable_with_a_default_needs_no_environment(
    value: str, env: dict[str, str], expected: str
) -> None:
    s = parse_config(INBOUND + f'source = "x"\nsecret = "{value}"\n', env)
    assert s.inbounds[0].secret == (expected or None)


def test_the_example_config_opens_the_admin_api_only_with_a_token_in_the_environment() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "relay.toml"
    text = example.read_text()
    assert 'token = "${RELAY_ADMIN_TOKEN:-}"' in text
    assert parse_config(text, {}).admin.token is None
    assert parse_config(text, {"RELAY_ADMIN_TOKEN": "t0ken"}).admin.token == "t0ken"
    # Written out as empty, it is a mistake rather than a way to close the API.
    assert problems(INBOUND + '[admin]\ntoken = ""\n') == [
        "admin.token: must not be empty (leave it out to keep the admin API closed)"
    ]
