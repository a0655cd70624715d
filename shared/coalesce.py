"""Concurrent lookups of single keys answered by one call for all of them.

A connect storm asks ``session.open`` for thousands of users at once. In the worker, one statement for a
few hundred users costs about what one statement for one user costs; in the gateway, one request for a
batch of users costs about what one request costs. So the lookups that arrive while a call is running are
answered together by the next call instead of one call each.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """Runs ``fetch(keys)`` for the keys asked meanwhile, one call at a time, at most ``max_keys`` each.

    No timer: a lookup on an idle coalescer starts a call in the next turn of the event loop (so the
    lookups of that turn share it); lookups arriving while it runs wait for the next one. ``fetch`` returns
    a value for every key it was given; when it raises, every lookup of that call raises the same error.
    When the draining task is cancelled (the event loop stopping), the lookups it leaves unanswered are
    cancelled too, rather than left waiting forever.
    """

    __slots__ = ("_fetch", "_max_keys", "_running", "_waiting")

    def __init__(self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]], max_keys: int) -> None:
        self._fetch = fetch
        self._max_keys = max_keys
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._running: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        """The value of ``key`` from the next call of ``fetch``."""
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[K, asyncio.Future[V]]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_keys]
                del self._waiting[: self._max_keys]
                try:
                    values = await self._fetch(list(dict.fromkeys(key for key, _ in batch)))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for key, future in batch:
                    if not future.done():
                        future.set_result(values[key])
        finally:
            self._running = None
            # Answered futures ignore cancel(); only those a cancellation interrupted are left.
            for _, future in (*batch, *self._waiting):
                future.cancel()
            self._waiting = []
