"""The SQL of ``user_profiles``: contact data from ``user.profile`` events, read by requests and senders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from shared.events import PROFILE_FIELDS

if TYPE_CHECKING:
    from collections.abc import Mapping

    import asyncpg

    from worker.store.pool import Connection

# $2..$5 are the values, $6 the names of the fields the event carried: an absent field keeps its value.
_UPSERT: Final = """
    INSERT INTO user_profiles AS p (user_id, email, name, locale, timezone)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (user_id) DO UPDATE SET
        email    = CASE WHEN 'email' = ANY($6::text[]) THEN EXCLUDED.email ELSE p.email END,
        name     = CASE WHEN 'name' = ANY($6::text[]) THEN EXCLUDED.name ELSE p.name END,
        locale   = CASE WHEN 'locale' = ANY($6::text[]) THEN EXCLUDED.locale ELSE p.locale END,
        timezone = CASE WHEN 'timezone' = ANY($6::text[]) THEN EXCLUDED.timezone ELSE p.timezone END,
        updated_at = now()"""

_GET: Final = "SELECT email, name, locale, timezone, updated_at FROM user_profiles WHERE user_id = $1"


async def upsert_profile(conn: Connection | asyncpg.Pool, user_id: str, changes: Mapping[str, Any]) -> None:
    """Apply one ``user.profile`` event's ``changes`` (field → value, ``None`` clears)."""
    await conn.execute(_UPSERT, user_id, *(changes.get(name) for name in PROFILE_FIELDS), list(changes))


async def get_profile(conn: Connection | asyncpg.Pool, user_id: str) -> dict[str, Any]:
    """The user's profile; every field ``None`` (and ``updated_at`` too) when no event arrived yet."""
    row = await conn.fetchrow(_GET, user_id)
    if row is None:
        return {"user_id": user_id, **dict.fromkeys(PROFILE_FIELDS), "updated_at": None}
    return {"user_id": user_id, **dict(row)}
