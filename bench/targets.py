"""The servers under test: how to configure, start and address each one.

Every target writes its config into its own directory under ``bench/.work/`` and is started by
the harness as a child process. Ports are fixed so logs and configs are easy to read.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
# Away from relay's usual 8080/18080, which other engineers' relays on this machine listen on;
# BENCH_PORT_BASE moves them all if these are taken too (scale.py uses +85).
PORT_BASE = int(os.environ.get("BENCH_PORT_BASE", "28000"))
BARE_PORT = PORT_BASE + 70
RELAY_PORT = PORT_BASE + 80
HOOKSPOOL_PORT = PORT_BASE + 81
RELAY_PG_PORT = PORT_BASE + 82
RELAY_WORKERS_PORT = PORT_BASE + 83
RELAY_PAIR_PORTS = (PORT_BASE + 84, PORT_BASE + 86)
SINK_PORT = PORT_BASE + 90
SECRET = "bench-secret"
ADMIN_TOKEN = "bench-admin-token"
DESTINATIONS = ("crm", "analytics", "support")
ORDERED = "ordered"
MANDRILL_PATH = "/hooks/mandrill"
MANDRILL_KEY = "bench-mandrill-key"


@dataclass(frozen=True)
class Launch:
    """What it takes to run one target: setup commands, the server command, its URLs."""

    name: str
    cmd: list[str]
    ready_url: str
    hook_url: str
    env: dict[str, str] = field(default_factory=dict)
    setup: list[list[str]] = field(default_factory=list)
    config: Path | None = None
    port: int = 0


def base_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def bare(*, uvloop: bool = False) -> Launch:
    cmd = [sys.executable, str(BENCH / "servers" / "bare.py"), "--port", str(BARE_PORT)]
    if uvloop:
        cmd.append("--uvloop")
    url = base_url(BARE_PORT)
    return Launch("bare aiohttp (ceiling)", cmd, f"{url}/readyz",
                  f"{url}/hooks/mailchimp/audience-user?secret={SECRET}")


def sink() -> Launch:
    url = base_url(SINK_PORT)
    return Launch("sink", [sys.executable, str(BENCH / "servers" / "sink.py"),
                           "--port", str(SINK_PORT)], f"{url}/readyz", url)


# ---- relay ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Retry:
    max_attempts: int = 10
    initial_delay: float = 0.5
    max_delay: float = 30.0


def mandrill_url(port: int = RELAY_PORT) -> str:
    """The Mandrill inbound's URL, which is also the URL its batches are signed for."""
    return f"{base_url(port)}{MANDRILL_PATH}?secret={SECRET}"


def relay_config(storage_url: str, *, retry: Retry, port: int = RELAY_PORT,
                 workers: str | int | None = None, ordering: str | None = None) -> str:
    """The realistic config: two audience inbounds and a Mandrill one, three destinations with
    different filters, storage left at relay's durable defaults (SQLite WAL, synchronous=FULL).

    With ``ordering`` the destinations are instead one, ``ordered``, that takes every event;
    ``ordering = "..."`` is written only for a value other than "none", so the unordered
    baseline runs at commits that do not know the key. ``workers`` likewise is written only
    when given.
    """
    sink_url = base_url(SINK_PORT)
    server = f'[server]\nlisten = "{HOST}:{port}"\nmax_body_bytes = 10485760\n'
    if workers is not None:
        server += f"workers = {_toml_value(workers)}\n"
    parts = [server, f'[storage]\nurl = "{storage_url}"\n', f'[admin]\ntoken = "{ADMIN_TOKEN}"\n']
    for source in ("user", "admin"):
        parts.append(
            f'[[inbound]]\nname = "audience-{source}"\n'
            f'path = "/hooks/mailchimp/audience-{source}"\n'
            f'kind = "mailchimp"\nsecret = "{SECRET}"\nsource = "{source}"\n'
        )
    parts.append(
        f'[[inbound]]\nname = "mandrill"\npath = "{MANDRILL_PATH}"\nkind = "mandrill"\n'
        f'secret = "{SECRET}"\nsource = "mandrill"\nmandrill_key = "{MANDRILL_KEY}"\n'
        f'public_url = "{mandrill_url(port)}"\n'
    )
    filters = {
        "crm": 'types = ["subscribe", "unsubscribe"]\nsources = ["user", "admin"]\n',
        "analytics": "",
        "support": 'types = ["unsubscribe", "cleaned"]\n',
    }
    if ordering is not None:
        extra = "" if ordering == "none" else f'ordering = "{ordering}"\n'
        filters = {ORDERED: extra}
    for name, lines in filters.items():
        parts.append(
            f'[[destination]]\nname = "{name}"\nurl = "{sink_url}/{name}"\n{lines}'
            f"timeout = 10.0\nconcurrency = 64\n"
            f"[destination.retry]\nmax_attempts = {retry.max_attempts}\n"
            f"initial_delay = {retry.initial_delay}\nmax_delay = {retry.max_delay}\n"
        )
    return "\n".join(parts)


def _toml_value(value: str | int) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def relay(work: Path, *, retry: Retry | None = None, name: str = "relay", port: int = RELAY_PORT,
          storage_url: str | None = None, workers: str | int | None = None,
          ordering: str | None = None) -> Launch:
    """relay on SQLite in ``work`` (or on ``storage_url``); a PostgreSQL store is migrated by a
    setup step first, so that several processes starting together do not race to create it."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "relay.toml"
    url = storage_url or f"sqlite:///{(work / 'relay.db').resolve()}"
    config.write_text(relay_config(url, retry=retry or Retry(), port=port, workers=workers,
                                   ordering=ordering))
    base = [sys.executable, "-m", "relay"]
    setup = [[*base, "migrate", "--config", str(config)]] if storage_url else []
    http = base_url(port)
    return Launch(name, [*base, "serve", "--config", str(config)], f"{http}/readyz",
                  f"{http}/hooks/mailchimp/audience-user?secret={SECRET}", setup=setup,
                  config=config, port=port)


def config_problem(config: Path, keys: tuple[str, ...]) -> str | None:
    """Why relay at this commit cannot run ``config`` because it does not know one of ``keys``
    (``relay check-config`` names the key), or None. Any other config problem raises."""
    done = subprocess.run([sys.executable, "-m", "relay", "check-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0:
        return None
    problem = unknown_key(done.stdout + done.stderr, keys)
    if problem is None:
        raise RuntimeError(f"relay check-config failed: {(done.stdout + done.stderr).strip()}")
    return f"not available at this commit (relay check-config: {problem})"


def unknown_key(output: str, keys: tuple[str, ...]) -> str | None:
    """The first line of ``relay check-config`` output that is about one of ``keys`` (the last
    part of a dotted key path such as ``server.workers`` or ``destination[0].ordering``)."""
    for line in output.splitlines():
        path = line.split(":", 1)[0].strip()
        if ":" in line and path.rsplit(".", 1)[-1] in keys:
            return line.strip()
    return None


def relay_matched_per_event() -> int:
    """Deliveries one ``subscribe`` from the user inbound makes: crm and analytics."""
    return 2


def relay_admin(action: str, names: tuple[str, ...] = DESTINATIONS,
                port: int = RELAY_PORT) -> str | None:
    """Pause or resume destinations through the admin API; the problem, or None if all worked."""
    for name in names:
        req = urllib.request.Request(f"{base_url(port)}/admin/destinations/{name}/{action}",
                                     data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                if not 200 <= resp.status < 300:
                    return f"{action} {name}: HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"{action} {name}: HTTP {exc.code}"
        except OSError as exc:
            return f"{action} {name}: {exc}"
    return None


# ---- hookspool -----------------------------------------------------------------------------------

def hookspool_installed() -> bool:
    return importlib.util.find_spec("hookspool") is not None


def hookspool_config(home: Path, secret_file: Path) -> str:
    """hookspool set up as relay is: the same two inbounds, the same three filtered HTTP
    destinations (one request per event, ``unwrap``), SQLite WAL with synchronous=FULL
    (hookspool's default), and one intake thread per wrk connection so no connection waits
    for a free thread."""
    sink_url = base_url(SINK_PORT)
    lines = [
        f'[spool]\nhome = "{home}"\ndb = "{home / "spool.db"}"\n',
        f'[intake]\nlisten = "{HOST}:{HOOKSPOOL_PORT}"\nmax_body_bytes = 786432\nthreads = 64\n',
        # The spool refuses writes below this much free disk; a shared CI disk can be small.
        "[limits]\nmin_free_bytes = 0\n",
        "[alerts]\ndry = true\n",
    ]
    secret = f'{{ file = "{secret_file}" }}'
    for source in ("audience-user", "audience-admin"):
        lines.append(
            f'[sources.{source}]\nmodule = "hookspool_mailchimp"\naction = "analytics"\n'
            f"secrets.secret = {secret}\n"
        )
    for name in DESTINATIONS:
        lines.append(
            f'[destinations.{name}]\ntype = "http"\nurl = "{sink_url}/{name}"\n'
            f"allow_insecure = true\nunwrap = true\nmax_inflight = 64\ntimeout_s = 10\n"
            f"secret = {secret}\n"
        )
    # analytics takes everything as the primary route; crm and support get copies (tees)
    # filtered by event type, as relay's types filters do.
    for source in ("audience-user", "audience-admin"):
        for dest, types in (("crm", ("subscribe", "unsubscribe")),
                            ("support", ("unsubscribe", "cleaned"))):
            for t in types:
                lines.append(
                    f'[[routes]]\nname = "{source}-{dest}-{t}"\nsource = "{source}"\n'
                    f'match = {{ type = "{t}" }}\ndestination = "{dest}"\ntee = true\n'
                )
    return "\n".join(lines)


def hookspool(work: Path) -> Launch:
    home = work.resolve()
    home.mkdir(parents=True, exist_ok=True)
    secret_file = home / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    config = home / "config.toml"
    config.write_text(hookspool_config(home, secret_file))
    base = [sys.executable, "-m", "hookspool", "--home", str(home), "--config", str(config)]
    url = base_url(HOOKSPOOL_PORT)
    env = {"PYTHONPATH": str(BENCH / "peers"), "HOOKSPOOL_ALERT_DRY": "1"}
    return Launch("hookspool", [*base, "intake"], f"{url}/healthz",
                  f"{url}/hooks/audience-user?secret={SECRET}", env=env,
                  setup=[[*base, "migrate"]])
