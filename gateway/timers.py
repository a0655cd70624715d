"""Per-connection deadlines and keepalive with one timer per process instead of one per connection.

A loop timer or a keepalive task per connection costs ~0.6–1.5 KiB each (handle, context copy, task and
coroutine); with tens of thousands of idle connections that is most of the gateway's own overhead. Both
jobs are batched here:

- :class:`DeadlineQueue` — a heap of ``(deadline, callback)`` entries behind a single ``call_at``;
  cancelling an entry drops its callback at once (so a closed connection is freed right away) and the
  heap is compacted when cancelled entries dominate.
- :class:`Keepalive` — wait ``interval`` seconds, ping every open connection at once, wait ``timeout``,
  drop (1011) those that did not answer, repeat. websockets' own per-connection keepalive is disabled.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import TYPE_CHECKING, Any

import structlog
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode as WsCloseCode
from websockets.protocol import State

from gateway.background import spawn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from websockets.asyncio.server import ServerConnection

log = structlog.get_logger("gateway.timers")


class Deadline:
    """A scheduled callback; :meth:`cancel` forgets the callback immediately."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback

    def __lt__(self, other: Deadline) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        self.callback = None


class DeadlineQueue:
    """Callbacks at Unix times, driven by one event-loop timer."""

    def __init__(self) -> None:
        self._heap: list[Deadline] = []
        self._cancelled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def schedule(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` once at Unix time ``when`` (or soon after); keep the result to cancel it."""
        entry = Deadline(when, callback)
        heapq.heappush(self._heap, entry)
        if when < self._armed_for:
            self._arm(when)
        return entry

    def cancel(self, entry: Deadline) -> None:
        if entry.callback is not None:
            entry.cancel()
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e.callback is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._armed_for = when
        self._timer = loop.call_later(max(0.0, when - time.time()), self._fire)

    def _fire(self) -> None:
        self._timer, self._armed_for = None, float("inf")
        now = time.time()
        heap = self._heap
        while heap and heap[0].when <= now:
            entry = heapq.heappop(heap)
            callback, entry.callback = entry.callback, None
            if callback is None:
                self._cancelled -= 1
            else:
                callback()
        if heap:
            self._arm(heap[0].when)


class Keepalive:
    """Pings every connection ``connections()`` yields each ``interval``; drops the silent ones (1011)."""

    def __init__(
        self, connections: Callable[[], Iterable[ServerConnection]], interval: float, timeout: float
    ) -> None:
        self._connections = connections
        self._interval = interval
        self._timeout = timeout

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            waiters: dict[ServerConnection, Any] = {}
            for connection in list(self._connections()):
                if connection.protocol.state is not State.OPEN:
                    continue
                if connection.transport.get_write_buffer_size():
                    # ping() waits until the output ahead of it drains (a paused transport), which a peer
                    # that stopped reading never lets happen: from a task, so no other connection waits.
                    waiters[connection] = spawn(self._ping(connection))
                else:
                    waiters[connection] = await self._ping(connection)
            await asyncio.sleep(self._timeout)
            silent = 0
            for connection, waiter in waiters.items():
                if _unanswered(waiter) and connection.protocol.state is State.OPEN:
                    silent += 1
                    drop(connection, WsCloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            if silent:
                log.info("closed connections that stopped answering pings", count=silent)

    @staticmethod
    async def _ping(connection: ServerConnection) -> asyncio.Future[float] | None:
        try:
            waiter = await connection.ping()
        except ConnectionClosed:
            return None
        assert isinstance(waiter, asyncio.Future)
        return waiter


def _unanswered(waiter: asyncio.Task[asyncio.Future[float] | None] | asyncio.Future[float] | None) -> bool:
    """Whether a ping got no pong in time: its pong is still awaited, or (a ping sent from a task) it is
    still waiting to go out behind output the peer has not read (that task is cancelled)."""
    if isinstance(waiter, asyncio.Task):
        if not waiter.done():
            waiter.cancel()
            return True
        waiter = waiter.result()
    return waiter is not None and not waiter.done()


def drop(connection: ServerConnection, code: int, reason: str) -> None:
    """Fail a connection whose peer does not read or answer: a close frame (``code``, ``reason``), then
    the TCP connection is aborted at once.

    A closing handshake would wait ``close_timeout`` for a peer that has shown it does not answer, and
    a plain transport close waits for the send buffer to drain, which a peer that stopped reading never
    lets happen; either would keep the connection's slot (and its per-user count) for seconds.
    """
    connection.protocol.fail(code, reason)
    for data in connection.protocol.data_to_send():
        if data:
            connection.transport.write(data)
    connection.transport.abort()
