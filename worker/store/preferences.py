"""The SQL of ``user_preferences``: a user's stored overrides, read, edited under the users lock, reset."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from worker.store.pool import LOCK_USER

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    import asyncpg

    from worker.store.pool import Connection

_PREFERENCES: Final = (
    "SELECT channels, types, quiet_hours, updated_at FROM user_preferences WHERE user_id = $1"
)

_ENSURE_USER: Final = "INSERT INTO users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING"


_STORE_PREFERENCES: Final = """
INSERT INTO user_preferences (user_id, channels, types, quiet_hours, updated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (user_id) DO UPDATE
   SET channels = EXCLUDED.channels, types = EXCLUDED.types,
       quiet_hours = EXCLUDED.quiet_hours, updated_at = EXCLUDED.updated_at
RETURNING updated_at
"""

_RESET_PREFERENCES: Final = "DELETE FROM user_preferences WHERE user_id = $1 RETURNING user_id"


def overrides_of(row: asyncpg.Record | None) -> dict[str, Any] | None:
    """The stored overrides in a row with ``channels, types, quiet_hours, updated_at``; ``None`` if none."""
    if row is None or row["updated_at"] is None:
        return None
    return {"channels": row["channels"], "types": row["types"], "quiet_hours": row["quiet_hours"]}


@dataclass(slots=True)
class StoredPreferences:
    """A user's overrides (``None``: the catalog defaults) and when they were last written."""

    overrides: dict[str, Any] | None
    updated_at: datetime | None


async def get_preferences(pool: asyncpg.Pool, user_id: str) -> StoredPreferences:
    """The user's stored overrides, if any."""
    row = await pool.fetchrow(_PREFERENCES, user_id)
    return StoredPreferences(overrides_of(row), row["updated_at"] if row else None)


@dataclass(slots=True)
class PreferencesEdit(StoredPreferences):
    """The overrides of a user whose ``users`` row this transaction holds locked; :meth:`save` writes."""

    conn: Connection
    user_id: str

    async def save(self, overrides: dict[str, Any]) -> datetime:
        """Store ``overrides`` (``channels``, ``types``, ``quiet_hours``); returns the new ``updated_at``."""
        updated_at: datetime = await self.conn.fetchval(
            _STORE_PREFERENCES,
            self.user_id,
            overrides["channels"],
            overrides["types"],
            overrides["quiet_hours"],
        )
        return updated_at


@contextlib.asynccontextmanager
async def edit_preferences(pool: asyncpg.Pool, user_id: str) -> AsyncIterator[PreferencesEdit]:
    """A transaction holding the user's ``users`` row (created if missing), with their overrides."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_ENSURE_USER, user_id)
        # Locked by a statement of its own, then read: preference writers of one user are serialized even
        # before their first row exists, and a writer that waited for another reads what that one stored
        # (joined into the lock's statement, it would read the overrides from before that commit).
        await conn.execute(LOCK_USER, user_id)
        row = await conn.fetchrow(_PREFERENCES, user_id)
        yield PreferencesEdit(overrides_of(row), row["updated_at"] if row else None, conn, user_id)


async def reset_preferences(pool: asyncpg.Pool, user_id: str) -> bool:
    """Drop the user's overrides; whether there were any.

    Under the user's lock, as every preference writer: an update holding it has read the overrides and
    will store them with its change, so a reset that did not wait for it would be answered (and told to
    every tab) and then undone by that update's commit.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_USER, user_id)
        return await conn.fetchval(_RESET_PREFERENCES, user_id) is not None
