"""Child processes for the benchmark: pinned to a core, polled until ready, always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


class NotReady(RuntimeError):
    """A child exited or did not answer its readiness URL before the deadline."""


def pinning_available() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    if cpu is None or not pinning_available():
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Child:
    """One started process; its output goes to a log file, not to the terminal."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, *, cpu: int | None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(pinned(cmd, cpu), stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                     start_new_session=True)

    def wait_ready(self, url: str, deadline_s: float = 30.0) -> None:
        """Poll ``url`` until it answers 200; fail early if the process has exited."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise NotReady(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if http_status(url) == 200:
                return
            time.sleep(0.1)
        raise NotReady(f"{self.name} not ready at {url} after {deadline_s:.0f}s: {self.tail()}")

    def tail(self, lines: int = 1) -> str:
        self._log_file.flush()
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) if text else "(no output)"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (graceful), then SIGKILL on the whole process group after ``grace_s``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log_file.close()


@contextlib.contextmanager
def running(name: str, cmd: Sequence[str], log: Path, *, cpu: int | None, ready_url: str,
            env: Mapping[str, str] | None = None, deadline_s: float = 30.0) -> Iterator[Child]:
    """A child that is ready inside the block and stopped after it, whatever happens."""
    child = Child(name, cmd, log, cpu=cpu, env=env)
    try:
        child.wait_ready(ready_url, deadline_s)
        yield child
    finally:
        child.stop()


def run_checked(cmd: Sequence[str], timeout: float = 120) -> str:
    """Run ``cmd`` to the end; its stdout, or RuntimeError with the end of its stderr."""
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def run_json(cmd: Sequence[str], timeout: float) -> dict[str, object]:
    """Run a helper that prints its figures as one JSON line last."""
    import json

    result: dict[str, object] = json.loads(run_checked(cmd, timeout).strip().splitlines()[-1])
    return result
