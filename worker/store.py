"""The SQL of the event pipeline: per-user ``seq`` in commit order, idempotent multi-row inserts.

The invariant (docs/design.md): every statement that allocates a user's ``seq`` holds that user's
``users`` row lock until commit, so a user's notifications become visible in ``seq`` order. A batch locks
its users sorted by id (``ORDER BY user_id FOR UPDATE``), so two batches never wait on each other in a
cycle; a broadcast locks the same way inside its one statement. Deadlocks that remain possible with other
writers (requests, retention) surface as ``DeadlockDetectedError`` and the caller retries the batch.

All functions take a connection that is already inside a transaction (except :func:`retention_step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from worker.db import NOTIFICATION_COLUMNS

if TYPE_CHECKING:
    from datetime import datetime

    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection = asyncpg.Connection | PoolConnectionProxy

_ENSURE_USERS: Final = """
    INSERT INTO users (user_id)
    SELECT u FROM unnest($1::text[]) AS u ORDER BY u
    ON CONFLICT DO NOTHING"""

_LOCK_USERS: Final = """
    SELECT u.user_id, p.channels, p.types, p.quiet_hours
      FROM users u LEFT JOIN user_preferences p USING (user_id)
     WHERE u.user_id = ANY($1::text[])
     ORDER BY u.user_id
       FOR UPDATE OF u"""

_EXISTING: Final = f"""
    SELECT user_id, idempotency_key, {NOTIFICATION_COLUMNS}
      FROM notifications
      JOIN unnest($1::text[], $2::text[]) AS k(user_id, idempotency_key) USING (user_id, idempotency_key)"""

# Allocates each user's seqs in input order and bumps last_seq and unread_count in the same statement.
_INSERT: Final = """
    WITH input AS (
        SELECT *
          FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                      $7::text[], $8::text[], $9::timestamptz[])
               WITH ORDINALITY
            AS t(user_id, id, type, category, title, message, data, idempotency_key, expires_at, ord)
    ), numbered AS (
        SELECT input.*, row_number() OVER (PARTITION BY user_id ORDER BY ord) AS rn FROM input
    ), bumped AS (
        UPDATE users u
           SET last_seq = u.last_seq + c.n, unread_count = u.unread_count + c.n
          FROM (SELECT user_id, count(*) AS n FROM input GROUP BY user_id) AS c
         WHERE u.user_id = c.user_id
     RETURNING u.user_id, u.last_seq - c.n AS base
    )
    INSERT INTO notifications
           (user_id, seq, id, type, category, title, message, data, idempotency_key, expires_at)
    SELECT n.user_id, b.base + n.rn, n.id, n.type, n.category, n.title, n.message, n.data::jsonb,
           n.idempotency_key, n.expires_at
      FROM numbered n JOIN bumped b USING (user_id)
    RETURNING user_id, id, seq, created_at"""

# One statement for a broadcast: every known user whose effective preferences allow the type in-app
# (critical types always), minus those who already have it, locked in user-id order, each given its
# next seq and one more unread.
_BROADCAST: Final = """
    WITH recipients AS (
        SELECT u.user_id
          FROM users u
          JOIN notification_types t ON t.name = $2
          LEFT JOIN user_preferences p ON p.user_id = u.user_id
         WHERE (t.critical
                OR (coalesce((p.channels ->> 'in_app')::boolean, true)
                    AND coalesce((p.types -> $2 ->> 'in_app')::boolean, t.default_in_app)))
           AND ($7::text IS NULL OR NOT EXISTS (
                   SELECT 1 FROM notifications n
                    WHERE n.user_id = u.user_id AND n.idempotency_key = $7))
         ORDER BY u.user_id
           FOR UPDATE OF u
    ), bumped AS (
        UPDATE users u
           SET last_seq = u.last_seq + 1, unread_count = u.unread_count + 1
          FROM recipients r
         WHERE u.user_id = r.user_id
     RETURNING u.user_id, u.last_seq
    )
    INSERT INTO notifications
           (user_id, seq, id, type, category, title, message, data, idempotency_key, expires_at)
    SELECT b.user_id, b.last_seq, $1, $2, $3, $4, $5, $6::text::jsonb, $7, $8
      FROM bumped b"""

_RETENTION_PICK: Final = """
    SELECT user_id, seq
      FROM notifications
     WHERE created_at < now() - make_interval(days => $1)
     ORDER BY created_at
     LIMIT $2"""

_RETENTION_DELETE: Final = """
    WITH doomed AS (
        SELECT * FROM unnest($1::text[], $2::bigint[]) AS d(user_id, seq)
    ), gone AS (
        DELETE FROM notifications n USING doomed d
         WHERE n.user_id = d.user_id AND n.seq = d.seq
     RETURNING n.user_id, n.read_at IS NULL AS unread
    ), counted AS (
        SELECT user_id, count(*) FILTER (WHERE unread) AS unread FROM gone GROUP BY user_id
    ), adjusted AS (
        UPDATE users u SET unread_count = u.unread_count - c.unread
          FROM counted c
         WHERE u.user_id = c.user_id AND c.unread > 0
     RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM adjusted) AS users"""


@dataclass(slots=True)
class NewRows:
    """Columns of the notifications a batch inserts, one list per column, in insertion order."""

    user_id: list[str] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    type: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    title: list[str] = field(default_factory=list)
    message: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)  # JSON text, serialized once
    idempotency_key: list[str | None] = field(default_factory=list)
    expires_at: list[datetime | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_id)

    def columns(self) -> tuple[list[Any], ...]:
        """The nine arrays, in the order of the insert statement's parameters."""
        return (
            self.user_id,
            self.id,
            self.type,
            self.category,
            self.title,
            self.message,
            self.data,
            self.idempotency_key,
            self.expires_at,
        )


async def lock_users(conn: Connection, user_ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """Create missing ``users`` rows, lock all of them in id order, and return their overrides.

    Returns:
        ``user_id → {"channels", "types", "quiet_hours"}`` for users with stored preferences, else ``None``.
    """
    ordered = sorted(user_ids)
    await conn.execute(_ENSURE_USERS, ordered)
    rows = await conn.fetch(_LOCK_USERS, ordered)
    return {
        row["user_id"]: (
            {"channels": row["channels"], "types": row["types"], "quiet_hours": row["quiet_hours"]}
            if row["channels"] is not None
            else None
        )
        for row in rows
    }


async def existing(
    conn: Connection, user_ids: list[str], keys: list[str]
) -> dict[tuple[str, str], asyncpg.Record]:
    """Stored notifications for the ``(user_ids[i], keys[i])`` idempotency pairs, by pair.

    Call it while holding the users' locks: no one else can insert for those users until commit.
    """
    if not keys:
        return {}
    rows = await conn.fetch(_EXISTING, user_ids, keys)
    return {(row["user_id"], row["idempotency_key"]): row for row in rows}


async def insert(conn: Connection, rows: NewRows) -> list[asyncpg.Record]:
    """Insert ``rows`` with the next seqs of their (locked) users; ``(seq, created_at)`` in input order."""
    if not rows:
        return []
    returned = {(row["user_id"], row["id"]): row for row in await conn.fetch(_INSERT, *rows.columns())}
    # RETURNING follows the plan's join order, not the input's: put the records back in input order.
    return [returned[key] for key in zip(rows.user_id, rows.id, strict=True)]


async def broadcast(
    conn: Connection,
    *,
    notification_id: str,
    type_: str,
    category: str,
    title: str,
    message: str,
    data_json: str,
    idempotency_key: str | None,
    expires_at: datetime | None,
) -> int:
    """Store one broadcast for every allowed known user in one statement; return how many got it."""
    status = await conn.execute(
        _BROADCAST,
        notification_id,
        type_,
        category,
        title,
        message,
        data_json,
        idempotency_key,
        expires_at,
    )
    return int(status.rsplit(" ", 1)[-1])


async def retention_step(conn: Connection, days: int, limit: int) -> int:
    """Delete up to ``limit`` notifications older than ``days`` in one short transaction; return the count.

    The users of the doomed rows are locked in id order first (the batch order), then the rows are
    deleted and their users' ``unread_count`` lowered by the unread ones, in the same transaction.
    """
    async with conn.transaction():
        doomed = await conn.fetch(_RETENTION_PICK, days, limit)
        if not doomed:
            return 0
        users = sorted({row["user_id"] for row in doomed})
        await conn.execute(
            "SELECT 1 FROM users WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE", users
        )
        result = await conn.fetchrow(
            _RETENTION_DELETE, [row["user_id"] for row in doomed], [row["seq"] for row in doomed]
        )
    assert result is not None
    deleted: int = result["deleted"]
    return deleted
