"""Reloading the configuration of a running relay (``kill -HUP``, ``systemctl reload relay``).

The file is read and checked again; if it is valid and changes only what can change while
relay runs, the new configuration replaces the old one at once, between two requests: no
request is dropped, none is answered half by one and half by the other. Otherwise it is refused
with one log line per problem, and the running configuration stays as it was. Reloadable:
``[[inbound]]``, ``[[destination]]``, ``[admin] token``, ``[retention]``. Not reloadable (a
restart applies them): ``[server]`` (the listening socket and its limits), ``[admin] listen``,
``[storage]`` (the open database) and ``[dedup]``.

    reloader = ConfigReloader(app, Path("relay.toml"))
    loop.add_signal_handler(signal.SIGHUP, reloader.request)

A supervisor running several relay processes forwards SIGHUP to each; each reloads itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from relay.config import ConfigError, Settings, load_config
from relay.model import AuditAction
from relay.server.audit import Actor

log = logging.getLogger("relay.reload")

# Who the audit trail names for a reload: the signal, not a person (the CLI's operator is not
# known to a process that gets a signal).
RELOAD_ACTOR = Actor("signal:SIGHUP")
# Settings a running relay cannot take over: its socket, its database, its dedup window.
_FIXED = ("server", "storage", "dedup_window")


def fixed_changes(old: Settings, new: Settings) -> list[str]:
    """What the new configuration changes that only a restart applies: one line each, naming
    the key and never its value (a storage URL may hold a password)."""
    problems = []
    for name in _FIXED:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        keys = ["dedup.window"] if name == "dedup_window" else _changed_keys(before, after, name)
        problems += [_restart(key) for key in keys]
    if old.admin.listen != new.admin.listen:  # the operator address is a socket too
        problems.append(_restart("admin.listen"))
    return problems


def _restart(key: str) -> str:
    return (
        f"{key}: changed, but cannot change while relay runs: restart relay to apply it (or put"
        " the old value back)"
    )


def _changed_keys(before: Any, after: Any, prefix: str) -> list[str]:
    out = []
    for field in dataclasses.fields(before):
        a, b = getattr(before, field.name), getattr(after, field.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a):
            out += _changed_keys(a, b, f"{prefix}.{field.name}")
        else:
            out.append(f"{prefix}.{field.name}")
    # host and port are one key in the file.
    return sorted({k.replace(".host", ".listen").replace(".port", ".listen") for k in out})


def describe_changes(old: Settings, new: Settings) -> list[str]:
    """What a reload changes, for the log and the audit trail (names, never secret values)."""
    changes: list[str] = []
    for what, before, after in (
        ("inbound", old.inbounds, new.inbounds),
        ("destination", old.destinations, new.destinations),
    ):
        was = {item.name: item for item in before}
        now = {item.name: item for item in after}
        changes += [f"+{what} {name}" for name in now if name not in was]
        changes += [f"-{what} {name}" for name in was if name not in now]
        for name in now.keys() & was.keys():
            if now[name] != was[name]:
                fields = [
                    f.name
                    for f in dataclasses.fields(now[name])
                    if getattr(now[name], f.name) != getattr(was[name], f.name)
                ]
                changes.append(f"~{what} {name} ({', '.join(fields)})")
    if old.admin.token != new.admin.token:
        changes.append("~admin token")
    if old.retention != new.retention:
        changes.append("~retention")
    return sorted(changes, key=lambda c: (c[1:], c[0]))


class ConfigReloader:
    """Reloads on request, one reload at a time; a request during a reload runs once after it.

    ``apply`` puts valid settings into effect (``Relay.reload``); ``audit`` records it.
    """

    def __init__(
        self,
        path: Path,
        current: Callable[[], Settings],
        apply: Callable[[Settings], Coroutine[Any, Any, None]],
        audit: Callable[[Actor, AuditAction, list[str]], Coroutine[Any, Any, None]],
    ) -> None:
        self.path = path
        self._current = current
        self._apply = apply
        self._audit = audit
        self._task: asyncio.Task[None] | None = None
        self._again = False
        # Until relay has started, a request waits (a SIGHUP during startup must neither kill
        # relay, which is what SIGHUP does unhandled, nor reconfigure it half started).
        self._serving = False

    def request(self) -> None:
        """Start a reload (safe to call from a signal handler on the event loop)."""
        if not self._serving or (self._task is not None and not self._task.done()):
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-reload")

    def serving(self) -> None:
        """Relay has started: reloads run from now on, one asked for meanwhile at once."""
        self._serving = True
        if self._again:
            self.request()

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception:  # a bug must not kill the process that serves webhooks
                log.exception("reload failed; the running configuration is kept")
            if not self._again:
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def reload(self) -> bool:
        """Read, check and apply the file; whether the new configuration is in effect."""
        log.info("reloading the configuration from %s", self.path)
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            for warning in exc.warnings:
                log.warning("config: %s", warning)
            log.error("reload refused: the running configuration is kept")
            return False
        old = self._current()
        if problems := fixed_changes(old, new):
            for problem in problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused: the running configuration is kept")
            return False
        for warning in new.warnings:
            log.warning("config: %s", warning)
        changes = describe_changes(old, new)
        await self._apply(new)
        log.warning(
            "configuration reloaded from %s: %s", self.path, ", ".join(changes) or "no changes"
        )
        await self._audit(RELOAD_ACTOR, AuditAction.RELOAD, changes)
        return True
