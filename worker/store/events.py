"""The SQL of the event pipeline: per-user ``seq`` in commit order, idempotent multi-row inserts.

The invariant (docs/design.md): every statement that allocates a user's ``seq`` holds that user's
``users`` row lock until commit, so a user's notifications become visible in ``seq`` order. A batch locks
its users sorted by id (``ORDER BY user_id FOR UPDATE``), so two batches never wait on each other in a
cycle; a broadcast locks the same way inside its one statement. Deadlocks that remain possible with other
writers (requests, retention) surface as ``DeadlockDetectedError`` and the caller retries the batch.

Every function takes a connection that is already inside a transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from worker.store.notifications import NOTIFICATION_COLUMNS, notification_json

if TYPE_CHECKING:
    from datetime import datetime

    from worker.routing import BroadcastRouting, NewRows
    from worker.store.pool import Connection

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

# "May this user see type t in-app?" over users u, notification_types t and user_preferences p (a left
# join: no row is no overrides). This is shared.preferences.decide_channels for "in_app", written for a
# set-based statement: a critical type's in-app is locked on; otherwise the master switch (default on)
# and the type's switch (default: the catalog's default_in_app) must both allow it.
# tests/integration/test_preference_rule_sql.py checks that the two agree on every combination.
IN_APP_ALLOWED: Final = """(t.critical
        OR (coalesce((p.channels ->> 'in_app')::boolean, true)
            AND coalesce((p.types -> t.name ->> 'in_app')::boolean, t.default_in_app)))"""

# One statement for a broadcast: every known user whose effective preferences allow the type in-app,
# minus those who already have it, locked in user-id order, each given its next seq and one more unread.
_BROADCAST: Final = f"""
    WITH recipients AS (
        SELECT u.user_id
          FROM users u
          JOIN notification_types t ON t.name = $2
          LEFT JOIN user_preferences p ON p.user_id = u.user_id
         WHERE {IN_APP_ALLOWED}
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


async def existing(conn: Connection, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored Notification objects of the ``(user_id, idempotency_key)`` pairs, by pair.

    Call it while holding the users' locks: no one else can insert for those users until commit.
    """
    if not pairs:
        return {}
    rows = await conn.fetch(_EXISTING, [user for user, _ in pairs], [key for _, key in pairs])
    return {(row["user_id"], row["idempotency_key"]): notification_json(row) for row in rows}


async def insert(conn: Connection, rows: NewRows) -> list[tuple[int, datetime]]:
    """Insert ``rows`` with the next seqs of their (locked) users; ``(seq, created_at)`` in input order."""
    if not rows:
        return []
    returned = {
        (row["user_id"], row["id"]): (row["seq"], row["created_at"])
        for row in await conn.fetch(_INSERT, *rows.columns())
    }
    # RETURNING follows the plan's join order, not the input's: put the rows back in input order.
    return [returned[key] for key in zip(rows.user_id, rows.id, strict=True)]


async def broadcast(conn: Connection, routing: BroadcastRouting) -> int:
    """Store one broadcast for every allowed known user in one statement; return how many got it."""
    event = routing.event
    status = await conn.execute(
        _BROADCAST,
        routing.notification_id,
        event.type,
        routing.category,
        event.title,
        event.message,
        routing.data_json,
        event.event_id,
        event.expires_at,
    )
    return int(status.rsplit(" ", 1)[-1])
