"""``user.profile`` events: contact data stored as it arrives (docs/protocol.md §9), one event at a time.

Profiles are rare next to notifications, so they skip the batcher: each is one upsert, acked once
committed. A value the database refuses dead-letters the event (``InvalidEvent``); during an outage the
upsert is retried with backoff for a while, then the event is handed back to the broker.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import asyncpg

from shared.events import InvalidEvent
from worker.store.pool import is_outage
from worker.store.profiles import upsert_profile

if TYPE_CHECKING:
    from shared.events import ProfileEvent

_BACKOFF_START: Final = 0.1
_BACKOFF_MAX: Final = 5.0
_MAX_OUTAGE_RETRIES: Final = 12  # about 30 s of backoff


async def store_profile(pool: asyncpg.Pool, event: ProfileEvent) -> None:
    """Upsert ``event``; ``InvalidEvent`` for data the database refuses, the outage error once it lasts."""
    delay = _BACKOFF_START
    for attempt in range(_MAX_OUTAGE_RETRIES + 1):
        try:
            await upsert_profile(pool, event.user_id, event.changes())
            return
        except Exception as exc:
            if not is_outage(exc):
                if isinstance(exc, asyncpg.PostgresError):
                    raise InvalidEvent(f"store: {exc.__class__.__name__}: {exc}") from exc
                raise
            if attempt == _MAX_OUTAGE_RETRIES:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
