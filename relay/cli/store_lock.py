"""One ``relay serve`` per SQLite file: an OS lock on ``<database>.lock``, held while it runs.

SQLite lets a second process open the same file, and a second relay would start, say it was
ready, and run its own delivery workers, pause flags and commit order against the first one's.
``flock`` is released by the kernel when the process exits however it exits (SIGKILL, OOM), so
a crashed relay never leaves a stale lock behind, unlike a PID file.

Several processes of **one** relay (issue 12: workers under one supervisor) share the lock
instead of competing for it: the supervisor takes it with ``acquire_store_lock`` and starts
each worker with ``lock.child_env()`` in its environment and ``pass_fds=(lock.fd,)``. A worker
finds ``RELAY_STORE_LOCK_FD`` and uses the inherited descriptor, which is the same open file
description and so already holds the lock; a process given any other descriptor is refused.

    lock = acquire_store_lock(settings.storage)   # StoreLockError: in use by another relay
    try:
        ...serve...
    finally:
        lock.release() if lock else None
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from relay.config import StorageConfig
from relay.store.sqlite.store import sqlite_path

LOCK_FD_ENV = "RELAY_STORE_LOCK_FD"


class StoreLockError(Exception):
    """The store is in use by another relay, or its lock cannot be taken; a one-line reason."""


@dataclass
class StoreLock:
    path: Path
    fd: int

    def child_env(self) -> dict[str, str]:
        """The environment a worker process of this relay needs to share the lock."""
        os.set_inheritable(self.fd, True)
        return {LOCK_FD_ENV: str(self.fd)}

    def release(self) -> None:
        # Closing is enough: the lock goes with the last descriptor of its open file description.
        with contextlib.suppress(OSError):
            os.close(self.fd)


def lock_path(storage: StorageConfig) -> Path | None:
    """Where the lock of this store lives; None for stores that many processes may share."""
    if not storage.url.startswith("sqlite:///"):
        return None
    return Path(sqlite_path(storage.url) + ".lock")


def acquire_store_lock(
    storage: StorageConfig, environ: Mapping[str, str] | None = None
) -> StoreLock | None:
    """Take (or, in a worker, adopt) the store's lock for the life of the process."""
    path = lock_path(storage)
    if path is None:
        return None
    env = os.environ if environ is None else environ
    inherited = env.get(LOCK_FD_ENV)
    if inherited is not None:
        return _adopt(path, inherited)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreLockError(f"cannot create lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        by = f"another relay serve (pid {holder})" if holder else "another relay serve"
        raise StoreLockError(
            f"{sqlite_path(storage.url)} is in use by {by}; run one relay serve per SQLite file"
            f" (lock: {path})"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StoreLockError(f"cannot lock {path}: {exc.strerror or exc}") from None
    # The PID is only for the message a second relay prints; the lock itself is the flock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StoreLock(path, fd)


def _adopt(path: Path, text: str) -> StoreLock:
    refused = f"{LOCK_FD_ENV}={text} is not this relay's lock on {path}"
    if not (text.isascii() and text.isdigit()):
        raise StoreLockError(refused)
    fd = int(text)
    try:
        held, wanted = os.fstat(fd), os.stat(path)
    except OSError:
        raise StoreLockError(refused) from None
    if (held.st_dev, held.st_ino) != (wanted.st_dev, wanted.st_ino):
        raise StoreLockError(refused)
    try:
        # Succeeds at once on the supervisor's own open file description (it holds the lock);
        # fails on a descriptor opened separately while the lock is held elsewhere.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise StoreLockError(refused) from None
    os.set_inheritable(fd, False)
    return StoreLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
