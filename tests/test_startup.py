"""Starting `relay serve` as real processes: one relay per SQLite file, and startup lines that
tell the truth (started only once the port is bound; a fatal line in the configured format)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from relay.cli.store_lock import acquire_store_lock
from relay.config import StorageConfig
from tests.support import RelayProcess, config_text, free_port, wait_until

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, name: str, db: Path, port: int, json_logs: bool = False) -> Path:
    cfg = tmp_path / name
    extra = 'log_format = "json"' if json_logs else ""
    cfg.write_text(config_text(db, port=port, server_extra=extra))
    return cfg


def _serve(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `relay serve` expecting it to refuse to start (it would run until stopped)."""
    return subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


async def test_a_second_relay_on_the_same_sqlite_file_is_refused_until_the_first_is_gone(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.db"
    port = free_port()
    first = RelayProcess(_config(tmp_path, "a.toml", db, port), port, tmp_path / "a.log")
    await first.start()
    try:
        assert first.proc is not None
        # Another port, the same file: refused because of the file, before anything listens.
        second_port = free_port()
        second_cfg = _config(tmp_path, "b.toml", db, second_port)
        refused = await asyncio.to_thread(_serve, second_cfg)
        assert refused.returncode == 1
        (line,) = refused.stderr.splitlines()
        assert line.endswith(
            f"CRITICAL relay.cli {db} is in use by another relay serve (pid {first.proc.pid});"
            f" run one relay serve per SQLite file (lock: {db}.lock)"
        )
        assert "relay started" not in refused.stderr and refused.stdout == ""
        with socket.socket() as probe:  # the refused relay never bound its port
            probe.bind(("127.0.0.1", second_port))

        # SIGKILL leaves no stale lock: the kernel drops it with the process.
        first.kill(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 20)
        second = RelayProcess(second_cfg, second_port, tmp_path / "b.log")
        await second.start()
        second.kill(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 20) == 0
    finally:
        first.ensure_stopped()


async def test_the_refusal_is_json_with_json_logs(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    lock = acquire_store_lock(StorageConfig(url=f"sqlite:///{db}"))
    assert lock is not None
    try:
        refused = await asyncio.to_thread(
            _serve, _config(tmp_path, "b.toml", db, free_port(), json_logs=True)
        )
    finally:
        lock.release()
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    entry = orjson.loads(line)
    assert (entry["level"], entry["logger"]) == ("critical", "relay.cli")
    assert entry["message"].startswith(f"{db} is in use by another relay serve (pid {os.getpid()})")


async def test_workers_of_one_relay_share_its_lock_through_the_environment(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.db"
    # The test plays the supervisor of a multi-process relay: it holds the lock and passes it on.
    lock = acquire_store_lock(StorageConfig(url=f"sqlite:///{db}"))
    assert lock is not None
    port = free_port()
    worker = RelayProcess(_config(tmp_path, "w.toml", db, port), port, tmp_path / "w.log")
    worker.env = lock.child_env()
    try:
        with worker.log.open("ab") as log:
            worker.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(worker.config)],
                stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock.fd,),
                env={**os.environ, **worker.env},
            )  # fmt: skip
        await wait_until(
            lambda: "relay started" in worker.log.read_text(), timeout=20, what="the worker"
        )
        # A relay that is not one of its workers is still refused...
        stranger = await asyncio.to_thread(_serve, _config(tmp_path, "s.toml", db, free_port()))
        assert stranger.returncode == 1 and "is in use by another relay serve" in stranger.stderr
        # ...and so is one that names a descriptor that is not the lock.
        forged = await asyncio.to_thread(
            _serve,
            _config(tmp_path, "f.toml", db, free_port()),
            {**os.environ, "RELAY_STORE_LOCK_FD": "0"},
        )
        assert forged.returncode == 1
        assert forged.stderr.rstrip().endswith(
            f"RELAY_STORE_LOCK_FD=0 is not this relay's lock on {db}.lock"
        )
        worker.kill(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 20) == 0
    finally:
        worker.ensure_stopped()
        lock.release()


@pytest.mark.parametrize("json_logs", [False, True])
async def test_started_is_logged_only_once_the_port_is_bound(
    tmp_path: Path, json_logs: bool
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _config(tmp_path, "relay.toml", tmp_path / "relay.db", port, json_logs)
        result = await asyncio.to_thread(_serve, cfg)
    assert result.returncode == 1
    assert "relay started" not in result.stderr and "listening on" not in result.stdout
    lines = result.stderr.splitlines()
    expected = f"cannot listen on 127.0.0.1:{port}: Address already in use"
    if json_logs:
        entries = [orjson.loads(line) for line in lines]  # every line is JSON
        fatal = [e["message"] for e in entries if e["level"] == "critical"]
    else:
        fatal = [line.split(" relay.cli ", 1)[1] for line in lines if " CRITICAL " in line]
    assert fatal == [expected]
    assert "Traceback" not in result.stderr

    # On a free port the same config starts, and says so.
    free = free_port()
    cfg.write_text(cfg.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{free}"))
    relay = RelayProcess(cfg, free, tmp_path / "ok.log")
    await relay.start()
    try:
        relay.kill(signal.SIGTERM)
        assert await asyncio.to_thread(relay.wait, 20) == 0
        log = relay.log.read_text()
        started = [line for line in log.splitlines() if "relay started: listen" in line]
        assert len(started) == 1 and f"listen 127.0.0.1:{free}" in started[0]
    finally:
        relay.ensure_stopped()
