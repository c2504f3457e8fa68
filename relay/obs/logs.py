"""Log setup: one line per event, plain text by default or JSON lines for log pipelines.

Ingest writes a line per request, so the handler buffers: lines are written to standard error
in blocks, flushed every FLUSH_INTERVAL by the app, at shutdown, and at once for errors.
A SIGKILL can lose the last fraction of a second of log lines, never stored data.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
from typing import TextIO

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

FLUSH_INTERVAL = 0.5

# C0 and C1 controls, DEL and the Unicode line and paragraph separators: characters that end a
# line, or drive a terminal, in some reader of the log.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes, so a logged value is one line.

    Values in log lines come from webhooks too (an audience ``type``, a journey header): a
    newline in one would otherwise let a sender write a line of its own.

    >>> escape_controls("subscribe\\n2026-01-01T00:00:00Z INFO forged")
    'subscribe\\\\n2026-01-01T00:00:00Z INFO forged'
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_one, text)


class TextFormatter(logging.Formatter):
    """relay's plain-text lines: UTC time, level, logger, message; controls escaped."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        self.converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The traceback that format() appends stays multi-line: it is for bugs, not webhooks.
        return escape_controls(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # JSON escapes controls itself; escaping the message as well keeps a reader that prints
        # the decoded field from writing a webhook's newline or terminal escape.
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": escape_controls(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class BufferedHandler(logging.Handler):
    """Writes formatted lines to a buffered stream; ``flush`` pushes them out."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.json = False
        self._lock = threading.Lock()
        # write_line formats the timestamp's seconds once per second, not once per line.
        self._second = -1
        self._stamp = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            with self._lock:
                self.stream.write(line)
                if record.levelno >= logging.ERROR:
                    self.stream.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()

    def write_line(self, level: int, name: str, message: str) -> None:
        """Write one record without building a LogRecord (the per-request lines' fast path)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._stamp}.{int((now - second) * 1000):03d}Z"
        level_name = logging.getLevelName(level)
        message = escape_controls(message)
        if self.json:
            line = orjson.dumps(
                {"time": stamp, "level": level_name.lower(), "logger": name, "message": message}
            ).decode()
        else:
            line = f"{stamp} {level_name} {name} {message}"
        with self._lock:
            self.stream.write(line + "\n")


class HotLog:
    """A logger for lines written per request or per attempt, where LogRecords cost ~10%.

    Writes straight to relay's handler when ``setup_logging`` installed it, else (in tests,
    embedded use) through the standard logger, so the lines look and filter the same.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.logger = logging.getLogger(name)

    def log(self, level: int, message: str) -> None:
        if not self.logger.isEnabledFor(level):
            return
        handlers = logging.getLogger().handlers
        handler = handlers[0] if len(handlers) == 1 else None
        if isinstance(handler, BufferedHandler) and level < logging.ERROR:
            handler.write_line(level, self.name, message)
        else:
            self.logger.log(level, "%s", message)


def _stderr_buffered() -> TextIO:
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return sys.stderr
    return open(os.dup(fd), "w", buffering=1 << 16, encoding="utf-8", errors="replace")


class MalformedRequestFilter(logging.Filter):
    """One line for a client's malformed HTTP instead of aiohttp's traceback.

    aiohttp logs the parser's error with a traceback at ERROR, and the error quotes the start of
    the offending line: for an over-long request line that is the URL with its ?secret=.
    Garbage from clients is not a bug in relay, and its content is never logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # A body that fails to decode (a bad Content-Encoding) surfaces when aiohttp drains
        # what the handler did not read, wrapped around the parser's error.
        if isinstance(exc, RequestPayloadError):
            exc = exc.__cause__
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
            record.msg = "malformed request from %s rejected: %s (HTTP %s)"
            record.args = (peer, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def setup_logging(log_format: str, level: int = logging.INFO) -> BufferedHandler:
    handler = BufferedHandler(_stderr_buffered())
    if log_format == "json":
        handler.json = True
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # relay's lines do not use the caller's file, thread or process: skip collecting them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's access log would duplicate relay's own request lines (and print query secrets).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    server_log.filters[:] = [MalformedRequestFilter()]
    return handler


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


class Throttled:
    """One log line per ``interval`` for a condition that can recur thousands of times a second
    (a connection flood): the first at once, then one saying how many were not logged.

        refusals = Throttled(log, logging.WARNING)
        refusals.log("refusing connections: %d open", open_now)
    """

    def __init__(self, logger: logging.Logger, level: int, interval: float = 10.0) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self._last = -interval
        self._unlogged = 0

    def log(self, message: str, *args: object) -> bool:
        """Log now if the interval has passed (True), else count the occurrence (False)."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._unlogged += 1
            return False
        if self._unlogged:
            message += f" ({self._unlogged} more since the last such line)"
        self.logger.log(self.level, message, *args)
        self._last, self._unlogged = now, 0
        return True
