"""The SQL of the event pipeline: per-user ``seq`` in commit order, idempotent multi-row inserts.

The invariant (docs/design.md): every statement that allocates a user's ``seq`` holds that user's
``users`` row lock until commit, so a user's notifications become visible in ``seq`` order. A batch locks
its known users sorted by id (``ORDER BY user_id FOR UPDATE``) and then creates its new ones sorted by id,
so two batches never wait on each other in a cycle (:func:`lock_users`); a broadcast chunk locks the same
way (``worker.store.broadcasts``). Deadlocks that remain possible with other writers (requests,
retention) surface as ``DeadlockDetectedError`` and the caller retries.

Every function takes a connection that is already inside a transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from shared.events import IdempotencyKey
from shared.preferences import with_profile_zone
from worker.store.notifications import NOTIFICATION_FIELDS, live, notification_json
from worker.writes import Written

if TYPE_CHECKING:
    from datetime import datetime

    from asyncpg import Record

    from worker.store.pool import Connection
    from worker.writes import Writes

_CREATE_USERS: Final = """
    INSERT INTO users (user_id)
    SELECT u FROM unnest($1::text[]) AS u ORDER BY u
    ON CONFLICT DO NOTHING
    RETURNING user_id"""

# The preferences and the profile are probed per user (LATERAL) for the reason given at _EXISTING.
_LOCK_USERS: Final = """
    SELECT u.user_id, p.channels, p.types, p.quiet_hours, pr.timezone
      FROM users u
      LEFT JOIN LATERAL (
           SELECT channels, types, quiet_hours FROM user_preferences s WHERE s.user_id = u.user_id LIMIT 1
           ) AS p ON true
      LEFT JOIN LATERAL (
           SELECT timezone FROM user_profiles s WHERE s.user_id = u.user_id LIMIT 1) AS pr ON true
     WHERE u.user_id = ANY($1::text[])
     ORDER BY u.user_id
       FOR UPDATE OF u"""

_PREFIXED: Final = ", ".join(f"n.{name}" for name in NOTIFICATION_FIELDS)

# A key is stored either as a row's own idempotency key or, for an event collapsed into a row that
# carries another event's key, in notification_keys; either way scoped by its source ("" without one).
# Written as one index probe per key (LATERAL ... LIMIT 1) rather than joins: the worker's prepared
# statements run on generic plans, and a generic plan made while the tables were small (a new
# database, or one whose statistics autovacuum has not refreshed yet) joined by sequential scans of
# the whole notifications table, so every batch grew slower as the table grew (docs/performance.md).
_EXISTING: Final = f"""
    SELECT k.user_id, k.source, k.idempotency_key, {_PREFIXED}
      FROM unnest($1::text[], $2::text[], $3::text[]) AS k(user_id, source, idempotency_key)
     CROSS JOIN LATERAL (
           SELECT * FROM notifications s
            WHERE s.user_id = k.user_id AND s.source = k.source AND s.idempotency_key = k.idempotency_key
            LIMIT 1) AS n
    UNION ALL
    SELECT k.user_id, k.source, k.idempotency_key, {_PREFIXED}
      FROM unnest($1::text[], $2::text[], $3::text[]) AS k(user_id, source, idempotency_key)
     CROSS JOIN LATERAL (
           SELECT c.notification_id FROM notification_keys c
            WHERE c.user_id = k.user_id AND c.source = k.source AND c.idempotency_key = k.idempotency_key
            LIMIT 1) AS c
     CROSS JOIN LATERAL (
           SELECT * FROM notifications s WHERE s.user_id = k.user_id AND s.id = c.notification_id LIMIT 1
           ) AS n"""

# The open (unread) live notification of each (user, collapse key), through the partial unique index.
# An expired one is gone for the user (amendment 15) and is no target: its key is released (the partial
# unique index allows one open row per key), so the event starts a new notification.
_TARGETS: Final = f"""
    WITH k AS (
        SELECT * FROM unnest($1::text[], $2::text[]) AS k(user_id, collapse_key)
    ), released AS (
        UPDATE notifications n SET collapse_key = NULL
          FROM k
         WHERE n.user_id = k.user_id AND n.collapse_key = k.collapse_key AND n.read_at IS NULL
           AND NOT {live("n")}
    )
    SELECT k.user_id, k.collapse_key, n.id
      FROM k
      JOIN notifications n
        ON n.user_id = k.user_id AND n.collapse_key = k.collapse_key AND n.read_at IS NULL AND {live("n")}"""

_CONTENT_ARRAYS: Final = (
    "{}::text[], {}::text[], {}::text[], {}::text[], {}::text[], {}::text[], {}::text[], {}::timestamptz[]"
)
_CONTENT_NAMES: Final = "type, category, title, message, data, url, actions, expires_at"


def _content_arrays(first: int) -> str:
    return _CONTENT_ARRAYS.format(*(f"${n}" for n in range(first, first + 8)))


# Allocates each user's seqs in input order and bumps last_seq, unread_count, unseen_count and
# inbox_count in the same statement (a new row is unread, unseen and in the inbox, whatever its count).
_INSERT: Final = f"""
    WITH input AS (
        SELECT *
          FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                      {_content_arrays(7)})
               WITH ORDINALITY
            AS t(user_id, id, source, idempotency_key, collapse_key, count, {_CONTENT_NAMES}, ord)
    ), numbered AS (
        SELECT input.*, row_number() OVER (PARTITION BY user_id ORDER BY ord) AS rn FROM input
    ), bumped AS (
        UPDATE users u
           SET last_seq = u.last_seq + c.n, unread_count = u.unread_count + c.n,
               unseen_count = u.unseen_count + c.n, inbox_count = u.inbox_count + c.n
          FROM (SELECT user_id, count(*) AS n FROM input GROUP BY user_id) AS c
         WHERE u.user_id = c.user_id AND u.user_id = ANY($1::text[])  -- an index condition in any plan
     RETURNING u.user_id, u.last_seq - c.n AS base
    )
    INSERT INTO notifications
           (user_id, seq, id, source, idempotency_key, collapse_key, count, {_CONTENT_NAMES})
    SELECT n.user_id, b.base + n.rn, n.id, n.source, n.idempotency_key, n.collapse_key, n.count, n.type,
           n.category, n.title, n.message, n.data::jsonb, n.url, n.actions::jsonb, n.expires_at
      FROM numbered n JOIN bumped b USING (user_id)
    RETURNING user_id, id, seq, created_at"""

# Collapse in place: each target (a live unread row, locked with its user) gets the user's next seq, the
# latest content (its expiry included: the latest event may give it one, or take it away), count + n,
# and is unseen and back in the inbox again. unread_count does not move (the row was and stays unread);
# unseen_count grows by the targets that had been seen, inbox_count by those that had been archived.
_COLLAPSE: Final = f"""
    WITH input AS (
        SELECT *
          FROM unnest($1::text[], $2::text[], $3::int[], {_content_arrays(4)}) WITH ORDINALITY
            AS t(user_id, id, n, {_CONTENT_NAMES}, ord)
    ), targets AS (
        SELECT i.*, s.row, s.seen_at IS NOT NULL AS was_seen, s.archived_at IS NOT NULL AS was_archived,
               row_number() OVER (PARTITION BY i.user_id ORDER BY i.ord) AS rn
          FROM input i
         CROSS JOIN LATERAL (
               SELECT ctid AS row, seen_at, archived_at FROM notifications s
                WHERE s.user_id = i.user_id AND s.id = i.id LIMIT 1) AS s
    ), bumped AS (
        UPDATE users u
           SET last_seq = u.last_seq + c.k, unseen_count = u.unseen_count + c.reseen,
               inbox_count = u.inbox_count + c.unarchived
          FROM (SELECT user_id, count(*) AS k, count(*) FILTER (WHERE was_seen) AS reseen,
                       count(*) FILTER (WHERE was_archived) AS unarchived
                  FROM targets GROUP BY user_id) AS c
         WHERE u.user_id = c.user_id AND u.user_id = ANY($1::text[])
     RETURNING u.user_id, u.last_seq - c.k AS base
    )
    UPDATE notifications n
       SET seq = b.base + t.rn, type = t.type, category = t.category, title = t.title,
           message = t.message, data = t.data::jsonb, url = t.url, actions = t.actions::jsonb,
           expires_at = t.expires_at, count = n.count + t.n,
           created_at = now(), seen_at = NULL, archived_at = NULL
      FROM targets t JOIN bumped b USING (user_id)
     WHERE n.ctid = t.row  -- the row the target probe found (its user is locked: it cannot move)
    RETURNING n.user_id, n.id, n.seq, n.count, n.created_at"""

_REMEMBER_KEYS: Final = """
    INSERT INTO notification_keys (user_id, source, idempotency_key, notification_id)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
    ON CONFLICT DO NOTHING"""


class UsersRaced(Exception):
    """Another transaction created one of a batch's new users while the batch held its known users' locks.

    Locking that user now could wait in a cycle (the batch holds higher ids that the creator may want next),
    so the caller rolls back and retries; the retry finds the user known and locks it in id order.
    """


async def lock_users(conn: Connection, user_ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """Lock the ``users`` rows of ``user_ids`` in id order, creating missing ones, and return their overrides.

    When every user is known (the common case) this is one statement. Otherwise the missing users are
    created, in id order, after the known ones are locked: rows this transaction creates are its own until
    commit, so holding them never makes it wait (another creator of the same user waits for this commit,
    then finds it there and retries), and they have no preferences yet (``user_preferences`` references
    ``users``), hence no overrides.

    Returns:
        ``user_id → {"channels", "types", "quiet_hours"}`` for users with stored preferences, else ``None``;
        quiet hours without a time zone get the profile's.

    Raises:
        UsersRaced: another transaction created one of the missing users meanwhile; retry the transaction.
    """
    ordered = sorted(set(user_ids))
    overrides = {row["user_id"]: stored_overrides(row) for row in await conn.fetch(_LOCK_USERS, ordered)}
    missing = [user for user in ordered if user not in overrides]
    if missing:
        if len(await conn.fetch(_CREATE_USERS, missing)) < len(missing):
            raise UsersRaced(f"a user of {len(missing)} new ones was created concurrently")
        overrides.update(dict.fromkeys(missing))
    return overrides


def stored_overrides(row: Record) -> dict[str, Any] | None:
    """A row's stored overrides (``None`` without preferences), quiet hours in the profile's zone if none."""
    stored = (
        {"channels": row["channels"], "types": row["types"], "quiet_hours": row["quiet_hours"]}
        if row["channels"] is not None
        else None
    )
    return with_profile_zone(stored, row["timezone"])


async def existing(
    conn: Connection, pairs: list[tuple[str, IdempotencyKey]]
) -> dict[tuple[str, IdempotencyKey], dict[str, Any]]:
    """The stored Notification objects of the ``(user_id, idempotency key)`` pairs, by pair.

    Call it while holding the users' locks: no one else can insert for those users until commit.
    """
    if not pairs:
        return {}
    users = [user for user, _ in pairs]
    sources = [key.source for _, key in pairs]
    rows = await conn.fetch(_EXISTING, users, sources, [key.key for _, key in pairs])
    return {
        (row["user_id"], IdempotencyKey(row["source"], row["idempotency_key"])): notification_json(row)
        for row in rows
    }


async def collapse_targets(conn: Connection, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The id of the open (unread) notification of each ``(user_id, collapse_key)`` that has one.

    Call it while holding the users' locks: every writer of a user's notifications takes that lock first,
    so the answer holds until commit (two workers racing on one user and key take turns).
    """
    if not pairs:
        return {}
    rows = await conn.fetch(_TARGETS, [user for user, _ in pairs], [key for _, key in pairs])
    return {(row["user_id"], row["collapse_key"]): row["id"] for row in rows}


async def write(conn: Connection, writes: Writes) -> Written:
    """Insert the new rows, collapse into the targets, remember absorbed keys; results in input order."""
    inserted: list[tuple[int, datetime]] = []
    collapsed: list[tuple[int, int, datetime]] = []
    rows, collapses = writes.rows, writes.collapses
    if rows:
        returned = {
            (row["user_id"], row["id"]): (row["seq"], row["created_at"])
            for row in await conn.fetch(_INSERT, *rows.columns())
        }
        # RETURNING follows the plan's join order, not the input's: put the rows back in input order.
        inserted = [returned[key] for key in zip(rows.user_id, rows.id, strict=True)]
    if collapses:
        updated = {
            (row["user_id"], row["id"]): (row["seq"], row["count"], row["created_at"])
            for row in await conn.fetch(_COLLAPSE, *collapses.columns())
        }
        collapsed = [updated[key] for key in zip(collapses.user_id, collapses.id, strict=True)]
    if writes.keys:
        absorbed = [(user, key.source, key.key, nid) for user, key, nid in writes.keys]
        await conn.execute(_REMEMBER_KEYS, *(list(column) for column in zip(*absorbed, strict=True)))
    return Written(inserted, collapsed)
