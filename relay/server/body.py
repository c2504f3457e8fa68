"""Request bodies in memory: each within its inbound's limit, all within one process budget.

    budget = InflightBudget(128 * 1024 * 1024)
    with budget.hold() as held:
        if not held.take(request.content_length):
            ...  # 503: the process is holding as many body bytes as it may
        body = await read_body(request.content, request.content_length, limit, held)

A body is counted from before it is read (its Content-Length) until the request is done, so
the bytes relay holds for requests never exceed the budget, however many senders upload at
once; past it new requests get 503, which Mailchimp retries.
"""

from __future__ import annotations

from types import TracebackType

from aiohttp import StreamReader


class BodyTooLargeError(Exception):
    """The body turned out larger than its limit while being read (no Content-Length)."""


class OverBudgetError(Exception):
    """The process budget for bodies in memory has no room for this one."""


class BodyIncompleteError(Exception):
    """The client stopped sending before the body was complete (it closed, or the stream ended)."""

    def __init__(self, received: int, expected: int | None) -> None:
        of = f" of {expected}" if expected is not None else ""
        super().__init__(f"client closed the connection after {received}{of} bytes")


class InflightBudget:
    """Bytes of request bodies the process holds at once, across all requests."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        # The most held at once since take_peak() last asked: whether memory is worth trimming.
        self.peak = 0

    def hold(self) -> Held:
        return Held(self)

    def take_peak(self) -> int:
        """The most held at once since the last call; the count restarts from what is held now."""
        peak, self.peak = self.peak, self.in_use
        return peak


class Held:
    """One request's share of the budget; given back, all of it, when the request is done."""

    def __init__(self, budget: InflightBudget) -> None:
        self._budget = budget
        self.taken = 0

    def take(self, n: int) -> bool:
        """Count ``n`` more bytes against the budget; False, taking nothing, if they do not fit."""
        budget = self._budget
        if budget.in_use + n > budget.capacity:
            return False
        budget.in_use += n
        budget.peak = max(budget.peak, budget.in_use)
        self.taken += n
        return True

    def __enter__(self) -> Held:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._budget.in_use -= self.taken
        self.taken = 0


async def read_body(content: StreamReader, length: int | None, limit: int, held: Held) -> bytes:
    """The whole body, read chunk by chunk into one buffer.

    With a Content-Length (already taken from the budget) the buffer is allocated once at its
    size: aiohttp's ``request.read()`` would instead raise its stream's high-water mark to the
    body limit, and grow a bytearray and copy it, holding ~1.5x the body per upload and leaving
    the heap fragmented. A chunked body is taken from the budget as it arrives.
    """
    if length is not None:
        buffer = bytearray(length)
        view = memoryview(buffer)
        received = 0
        try:
            while received < length:
                chunk = await content.readany()
                if not chunk:
                    raise BodyIncompleteError(received, length)
                if received + len(chunk) > length:  # aiohttp frames by Content-Length
                    raise BodyTooLargeError
                view[received : received + len(chunk)] = chunk
                received += len(chunk)
        except BaseException as exc:
            # The exception's traceback keeps this frame alive, and aiohttp keeps the exception
            # on the request's stream: without this the buffer outlives an aborted upload.
            view.release()
            del view, buffer
            if isinstance(exc, ConnectionError):  # aiohttp's word for a client that went away
                raise BodyIncompleteError(received, length) from None
            raise
        view.release()
        # One copy, made and the buffer dropped with no await between: at most one such copy
        # exists in the process at any moment.
        return bytes(buffer)
    chunks: list[bytes] = []
    received = 0
    try:
        while chunk := await content.readany():
            received += len(chunk)
            if received > limit:
                raise BodyTooLargeError
            if not held.take(len(chunk)):
                raise OverBudgetError
            chunks.append(chunk)
    except BaseException:
        chunks.clear()
        raise
    return b"".join(chunks)
