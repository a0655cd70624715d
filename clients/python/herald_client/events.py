"""The client's event stream: listeners (``on``) and async iterators (``events``) over one sequence."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Listener = Callable[["Event"], Any]

log = logging.getLogger("herald.client")


@dataclass(frozen=True, slots=True)
class Event:
    """One event: a server notification frame or a client state change (see the module docstring)."""

    method: str
    params: Any
    replayed: bool = False
    #: A ``notification:new`` whose id was delivered before with a lower ``seq``: a collapsed
    #: notification's new version, which replaces the item instead of adding one.
    replaces: bool = False


class EventStream:
    """Fans each :class:`Event` out to the listeners of its method, the ``"*"`` listeners and iterators.

    ``spawn`` runs the coroutine a coroutine-function listener returns (the client keeps those tasks).
    """

    def __init__(self, spawn: Callable[[Awaitable[Any]], None]) -> None:
        self._spawn = spawn
        self._listeners: dict[str, list[Listener]] = {}
        self._queues: set[asyncio.Queue[Event | None]] = set()
        self._ended = False

    def on(self, method: str, listener: Listener) -> Callable[[], None]:
        """Register ``listener`` for ``method`` (``"*"`` = every event); returns an unsubscriber."""
        self._listeners.setdefault(method, []).append(listener)
        return lambda: self._listeners.get(method, []).remove(listener)

    def events(self) -> AsyncIterator[Event]:
        """Every event from this call on, in order, until :meth:`end` (none once it has ended).

        The queue is registered here, not at the first ``__anext__``: an event emitted between this call
        and the first read is not lost."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self._ended:
            queue.put_nowait(None)
        else:
            self._queues.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Event]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.discard(queue)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every iterator and listener; a failing listener is logged, not raised."""
        for queue in self._queues:
            queue.put_nowait(event)
        for listener in [*self._listeners.get(event.method, ()), *self._listeners.get("*", ())]:
            try:
                outcome = listener(event)
                if asyncio.iscoroutine(outcome):
                    self._spawn(outcome)
            except Exception:
                log.exception("herald client listener for %s failed", event.method)

    def end(self) -> None:
        """End every iterator, and those asked for later (the client stopped for good)."""
        self._ended = True
        for queue in self._queues:
            queue.put_nowait(None)
