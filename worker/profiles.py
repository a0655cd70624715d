"""``user.profile`` events: contact data stored as it arrives (docs/protocol.md §9), one event at a time.

Profiles are rare next to notifications, so they skip the batcher: each is one upsert, acked once
committed. A value the database refuses dead-letters the event (``InvalidEvent``); during an outage the
upsert is retried with backoff for a while, then the event is handed back to the broker.

One user's events are stored one at a time, in delivery order (:class:`ProfileTurns`): an older event
that backs off during an outage must not land after a newer one. Different users are not ordered.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg

from shared.events import InvalidEvent
from worker.store.pool import is_outage, through_outage
from worker.store.profiles import upsert_profile

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shared.events import ProfileEvent


class _Turn:
    """A user's lock and how many events hold it or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class ProfileTurns:
    """Runs each user's profile work one at a time, in the order it was started; users side by side.

    The pipeline starts one task per ``user.profile`` delivery, in delivery order, whose first await is
    :meth:`run`'s lock: ``asyncio.Lock`` wakes its waiters first in, first out, so a user's events store
    and settle in delivery order. A user's entry goes once nobody holds or waits for its lock.
    """

    def __init__(self) -> None:
        self._turns: dict[str, _Turn] = {}

    def __len__(self) -> int:
        """How many users have an event storing or waiting (their entries, nobody else's, are kept)."""
        return len(self._turns)

    async def run(self, user_id: str, work: Callable[[], Awaitable[None]]) -> None:
        """Await ``work()`` once ``user_id``'s earlier work is done; later work waits for this one."""
        turn = self._turns.get(user_id)
        if turn is None:
            turn = self._turns[user_id] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                await work()
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[user_id]


async def store_profile(pool: asyncpg.Pool, event: ProfileEvent) -> None:
    """Upsert ``event``; ``InvalidEvent`` for data the database refuses, the outage error once it lasts."""
    try:
        await through_outage(lambda: upsert_profile(pool, event.user_id, event.changes(), event.changed_at))
    except asyncpg.PostgresError as exc:
        if is_outage(exc):
            raise
        raise InvalidEvent(f"store: {exc.__class__.__name__}: {exc}") from exc
