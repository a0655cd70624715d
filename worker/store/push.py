"""The SQL of ``push_subscriptions``: a user's browsers, kept to the newest ``limit``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncpg

# The same endpoint twice is one subscription: re-subscribing refreshes its keys and moves it to the caller
# (a browser profile signed in as another user).
_SUBSCRIBE: Final = """
    INSERT INTO push_subscriptions (id, user_id, endpoint, p256dh, auth, device)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (endpoint) DO UPDATE
       SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
           device = coalesce(EXCLUDED.device, push_subscriptions.device)
    RETURNING id"""

_TRIM: Final = """
    DELETE FROM push_subscriptions
     WHERE id IN (SELECT id FROM push_subscriptions WHERE user_id = $1
                   ORDER BY created_at DESC, id DESC OFFSET $2)"""

_LOCK_USER: Final = "SELECT pg_advisory_xact_lock(hashtextextended('push:' || $1, 0))"

_UNSUBSCRIBE: Final = "DELETE FROM push_subscriptions WHERE user_id = $1 AND endpoint = $2"

_LIST: Final = """
    SELECT id, endpoint, device, created_at FROM push_subscriptions
     WHERE user_id = $1 ORDER BY created_at DESC, id DESC"""

_TARGETS: Final = "SELECT id, endpoint, p256dh, auth FROM push_subscriptions WHERE user_id = $1"

_REMOVE: Final = "DELETE FROM push_subscriptions WHERE id = $1"


@dataclass(frozen=True, slots=True)
class Subscription:
    """Where and how to encrypt a push for one browser."""

    id: str
    endpoint: str
    p256dh: str
    auth: str


async def subscribe(
    pool: asyncpg.Pool,
    new_id: str,
    user_id: str,
    endpoint: str,
    keys: tuple[str, str],
    device: str | None,
    limit: int,
) -> str:
    """Store (or refresh) a subscription and drop the user's oldest beyond ``limit``; returns its id."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_USER, user_id)  # two subscribes of one user trim in turn
        subscription_id: str = await conn.fetchval(_SUBSCRIBE, new_id, user_id, endpoint, *keys, device)
        await conn.execute(_TRIM, user_id, limit)
    return subscription_id


async def unsubscribe(pool: asyncpg.Pool, user_id: str, endpoint: str) -> int:
    """Remove the caller's subscription with ``endpoint``; how many went (0 or 1)."""
    status: str = await pool.execute(_UNSUBSCRIBE, user_id, endpoint)
    return int(status.rsplit(" ", 1)[1])


async def list_subscriptions(pool: asyncpg.Pool, user_id: str) -> list[dict[str, Any]]:
    """The user's subscriptions, newest first."""
    return [dict(row) for row in await pool.fetch(_LIST, user_id)]


async def targets(pool: asyncpg.Pool, user_id: str) -> list[Subscription]:
    """Every subscription a push job of ``user_id`` goes to."""
    return [Subscription(**dict(row)) for row in await pool.fetch(_TARGETS, user_id)]


async def remove(pool: asyncpg.Pool, subscription_id: str) -> None:
    """Forget a subscription the push service says is gone (404/410)."""
    await pool.execute(_REMOVE, subscription_id)
