"""The SQL of ``push_subscriptions`` (a user's browsers, kept to the newest ``limit``) and of
``push_receipts`` (what each browser made of a push job that is being retried)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncpg

# The same endpoint twice is one subscription: re-subscribing refreshes its keys and moves it to the caller
# (a browser profile signed in as another user), as the caller's newest: kept by the trim that follows.
_SUBSCRIBE: Final = """
    INSERT INTO push_subscriptions (id, user_id, endpoint, p256dh, auth, device)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (endpoint) DO UPDATE
       SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
           device = coalesce(EXCLUDED.device, push_subscriptions.device), created_at = now()
    RETURNING id"""

# The user's oldest beyond $3 others: never $2, the subscription just saved (whatever its created_at).
_TRIM: Final = """
    DELETE FROM push_subscriptions
     WHERE id IN (SELECT id FROM push_subscriptions WHERE user_id = $1 AND id <> $2
                   ORDER BY created_at DESC, id DESC OFFSET $3)"""

_LOCK_USER: Final = "SELECT pg_advisory_xact_lock(hashtextextended('push:' || $1, 0))"

_UNSUBSCRIBE: Final = "DELETE FROM push_subscriptions WHERE user_id = $1 AND endpoint = $2"

_LIST: Final = """
    SELECT id, endpoint, device, created_at FROM push_subscriptions
     WHERE user_id = $1 ORDER BY created_at DESC, id DESC"""

# The user's subscriptions beside the job's receipts for the version being sent: a subscription with a
# receipt is settled (not sent to again); a receipt without a subscription (unsubscribed since) still says
# whether the job reached the user.
_TARGETS: Final = """
    SELECT coalesce(s.id, r.subscription_id) AS id, s.endpoint, s.p256dh, s.auth, r.status, r.error
      FROM (SELECT id, endpoint, p256dh, auth FROM push_subscriptions WHERE user_id = $1) s
      FULL JOIN (SELECT subscription_id, status, error FROM push_receipts
                  WHERE job_id = $2 AND version IS NOT DISTINCT FROM $3) r
        ON r.subscription_id = s.id"""

# A receipt of an older version (a collapsed notification replaced since) is overwritten.
_RECORD: Final = """
    INSERT INTO push_receipts (job_id, subscription_id, version, status, error)
    SELECT $1, r.subscription_id, $2, r.status, r.error
      FROM unnest($3::text[], $4::text[], $5::text[]) AS r(subscription_id, status, error)
    ON CONFLICT (job_id, subscription_id) DO UPDATE
       SET version = excluded.version, status = excluded.status, error = excluded.error,
           created_at = now()"""

_REMOVE: Final = "DELETE FROM push_subscriptions WHERE id = $1"


@dataclass(frozen=True, slots=True)
class Subscription:
    """Where and how to encrypt a push for one browser."""

    id: str
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """A device that is settled for one push job: it accepted it (``sent``) or refused it for good
    (``failed``, with the push service's answer)."""

    subscription_id: str
    status: str
    error: str | None


@dataclass(frozen=True, slots=True)
class Targets:
    """Where a push job goes on this attempt, and what earlier attempts already settled."""

    pending: list[Subscription]
    settled: list[Receipt]


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
        await conn.execute(_TRIM, user_id, subscription_id, limit - 1)
    return subscription_id


async def unsubscribe(pool: asyncpg.Pool, user_id: str, endpoint: str) -> int:
    """Remove the caller's subscription with ``endpoint``; how many went (0 or 1)."""
    status: str = await pool.execute(_UNSUBSCRIBE, user_id, endpoint)
    return int(status.rsplit(" ", 1)[1])


async def list_subscriptions(pool: asyncpg.Pool, user_id: str) -> list[dict[str, Any]]:
    """The user's subscriptions, newest first."""
    return [dict(row) for row in await pool.fetch(_LIST, user_id)]


async def targets(pool: asyncpg.Pool, user_id: str, job_id: str, version: int | None) -> Targets:
    """The subscriptions of ``user_id`` that job ``job_id`` (at notification ``version``) has yet to reach,
    and the receipts of those it already settled."""
    pending: list[Subscription] = []
    settled: list[Receipt] = []
    for row in await pool.fetch(_TARGETS, user_id, job_id, version):
        if row["status"] is not None:
            settled.append(Receipt(row["id"], row["status"], row["error"]))
        else:
            pending.append(Subscription(row["id"], row["endpoint"], row["p256dh"], row["auth"]))
    return Targets(pending, settled)


async def record_receipts(
    pool: asyncpg.Pool, job_id: str, version: int | None, receipts: list[Receipt]
) -> None:
    """Keep what these devices made of job ``job_id`` (at ``version``), so its retry skips them."""
    await pool.execute(
        _RECORD,
        job_id,
        version,
        [r.subscription_id for r in receipts],
        [r.status for r in receipts],
        [r.error for r in receipts],
    )


async def remove(pool: asyncpg.Pool, subscription_id: str) -> None:
    """Forget a subscription the push service says is gone (404/410)."""
    await pool.execute(_REMOVE, subscription_id)
