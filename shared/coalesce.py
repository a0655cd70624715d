"""Concurrent lookups of single keys answered by one call for all of them.

A connect storm asks ``session.open`` for thousands of users at once. In the worker, one statement for a
few hundred users costs about what one statement for one user costs; in the gateway, one request for a
batch of users costs about what one request costs. So the lookups that arrive while the calls are running
are answered together by the next call instead of one call each.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

K = TypeVar("K")
V = TypeVar("V")

_Lookup = tuple[K, "asyncio.Future[V]"]


class Coalescer(Generic[K, V]):
    """Runs ``fetch(keys)`` for the keys asked meanwhile: at most ``max_keys`` per call, and at most
    ``max_calls`` calls at a time (one by default).

    No timer: a lookup on an idle coalescer starts a call in the next turn of the event loop (so the
    lookups of that turn share it); lookups arriving while every call is running wait for the next one to
    start. ``fetch`` returns a value for every key it was given; when it raises, every lookup of that call
    raises the same error, and the lookups waiting for later calls are not affected.

    A lookup whose caller stopped waiting (cancelled, or timed out) before its call started is left out
    of it: a storm of abandoned lookups does not hold up the live ones behind it. When the event loop
    stops, the lookups left unanswered are cancelled, rather than left waiting forever.
    """

    __slots__ = ("_calls", "_dispatcher", "_fetch", "_max_keys", "_waiting")

    def __init__(
        self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]], max_keys: int, max_calls: int = 1
    ) -> None:
        self._fetch = fetch
        self._max_keys = max_keys
        self._calls = asyncio.Semaphore(max_calls)
        self._waiting: list[_Lookup[K, V]] = []
        self._dispatcher: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        """The value of ``key`` from the next call of ``fetch``."""
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch())
        return await future

    async def _dispatch(self) -> None:
        """Start a call whenever one may run and lookups wait; end when none wait."""
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._calls.acquire()
                batch = self._next_batch()
                if not batch:
                    self._calls.release()
                    return
                call = asyncio.create_task(self._answer(batch))
                calls.add(call)
                call.add_done_callback(calls.discard)
        except asyncio.CancelledError:
            # The event loop stopping: the calls this dispatcher started go with it.
            for call in calls:
                call.cancel()
            raise
        finally:
            self._dispatcher = None
            for _, future in self._waiting:
                future.cancel()
            self._waiting = []

    def _next_batch(self) -> list[_Lookup[K, V]]:
        """Up to ``max_keys`` of the waiting lookups whose callers still wait, oldest first."""
        self._waiting = [lookup for lookup in self._waiting if not lookup[1].done()]
        batch = self._waiting[: self._max_keys]
        del self._waiting[: self._max_keys]
        return batch

    async def _answer(self, batch: list[_Lookup[K, V]]) -> None:
        try:
            try:
                values = await self._fetch(list(dict.fromkeys(key for key, _ in batch)))
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for key, future in batch:
                if not future.done():
                    future.set_result(values[key])
        finally:
            self._calls.release()
            # Answered futures ignore cancel(); only those a cancellation interrupted are left.
            for _, future in batch:
                future.cancel()
