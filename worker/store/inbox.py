"""The SQL of a user's inbox requests: the session counters, pages, sync, and the mutations.

Every statement is scoped by the caller's verified user id; ids belonging to someone else match no row, so
they are ignored exactly like ids that do not exist.

``users.unread_count`` is maintained, never counted: each mutation changes ``notifications`` and the
counter in one statement (data-modifying CTEs), and reads take the counter. A mutation first locks the
user's ``users`` row (the ``locked`` CTE, which every changed row joins), so a user's mutations are
serialized and always take locks in the same order as the worker's inserts (users row, then
notifications): concurrent requests of one user cannot deadlock each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import asyncpg

from worker.store.notifications import NOTIFICATION_COLUMNS, notification_json
from worker.store.preferences import StoredPreferences, overrides_of

if TYPE_CHECKING:
    from collections.abc import Sequence

# This module's statements and the worker's inserts and retention lock users rows first, so they cannot
# deadlock one another; another writer locking in a different order (an operator's script) might, and
# that must not reach the client as an error.
DEADLOCK_RETRIES: Final = 3

_OPEN_SESSION: Final = """
WITH created AS (
    INSERT INTO users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING
    RETURNING last_seq, unread_count
)
SELECT u.last_seq, u.unread_count, p.channels, p.types, p.quiet_hours, p.updated_at
  FROM (SELECT last_seq, unread_count FROM created
        UNION ALL
        SELECT last_seq, unread_count FROM users WHERE user_id = $1) AS u
  LEFT JOIN user_preferences AS p ON p.user_id = $1
"""

UNREAD_COUNT: Final = "SELECT unread_count FROM users WHERE user_id = $1"

_SYNC: Final = f"""
SELECT {NOTIFICATION_COLUMNS} FROM notifications
 WHERE user_id = $1 AND seq > $2
 ORDER BY seq
 LIMIT $3
"""


def _mutation(changed: str, *, with_ids: bool = True) -> str:
    """One statement: lock the users row, change notifications (``changed``), adjust the counter.

    ``changed`` is a data-modifying statement over ``notifications AS n`` joined with ``locked`` and
    returning ``n.id``, ``n.seq`` and ``unread_delta`` (how the row changed the unread count); ``$1`` is
    the user id. Joining ``locked`` means no notification row is locked before the users row. The result
    is one row: how many rows changed, their ids in seq order (empty unless ``with_ids``) and the counter
    after the change.
    """
    ids = "ARRAY(SELECT id FROM changed ORDER BY seq)" if with_ids else "'{}'::text[]"
    return f"""
WITH locked AS (
    SELECT user_id, unread_count FROM users WHERE user_id = $1 FOR UPDATE
), changed AS (
    {changed}
), counter AS (
    UPDATE users SET unread_count = unread_count + (SELECT sum(unread_delta) FROM changed)
     WHERE user_id = $1 AND EXISTS (SELECT FROM changed)
 RETURNING unread_count
)
SELECT (SELECT count(*) FROM changed) AS changed, {ids} AS ids,
       COALESCE((SELECT unread_count FROM counter), (SELECT unread_count FROM locked), 0) AS unread_count
"""


_MARK_READ: Final = _mutation(
    """UPDATE notifications AS n SET read_at = now() FROM locked
     WHERE n.user_id = locked.user_id AND n.id = ANY($2::text[]) AND n.read_at IS NULL
 RETURNING n.id, n.seq, -1 AS unread_delta"""
)
_MARK_UNREAD: Final = _mutation(
    """UPDATE notifications AS n SET read_at = NULL FROM locked
     WHERE n.user_id = locked.user_id AND n.id = ANY($2::text[]) AND n.read_at IS NOT NULL
 RETURNING n.id, n.seq, 1 AS unread_delta"""
)
_DELETE: Final = _mutation(
    """DELETE FROM notifications AS n USING locked
     WHERE n.user_id = locked.user_id AND n.id = ANY($2::text[])
 RETURNING n.id, n.seq, CASE WHEN n.read_at IS NULL THEN -1 ELSE 0 END AS unread_delta"""
)
# The event says "all", so the (possibly 100,000) ids are not collected.
_MARK_ALL_READ: Final = _mutation(
    """UPDATE notifications AS n SET read_at = now() FROM locked
     WHERE n.user_id = locked.user_id AND n.read_at IS NULL
 RETURNING n.id, n.seq, -1 AS unread_delta""",
    with_ids=False,
)


@dataclass(frozen=True, slots=True)
class Session:
    """A user's counters and stored preferences, as ``session.open`` reads them."""

    unread_count: int
    last_seq: int
    preferences: StoredPreferences


async def open_session(pool: asyncpg.Pool, user_id: str) -> Session:
    """Make the user known (create the ``users`` row if missing); their counters and overrides."""
    row = await pool.fetchrow(_OPEN_SESSION, user_id)
    if row is None:
        # Another connection inserted the row after this statement's snapshot: read it again.
        row = await pool.fetchrow(_OPEN_SESSION, user_id)
    assert row is not None
    return Session(
        row["unread_count"], row["last_seq"], StoredPreferences(overrides_of(row), row["updated_at"])
    )


class PageQuery(Protocol):
    """What selects a page of ``notifications.list`` (its params model has these fields)."""

    @property
    def limit(self) -> int: ...
    @property
    def before(self) -> int | None: ...
    @property
    def unread_only(self) -> bool: ...
    @property
    def types(self) -> Sequence[str] | None: ...
    @property
    def categories(self) -> Sequence[str] | None: ...


def list_query(params: PageQuery, user_id: str) -> tuple[str, list[Any]]:
    """The page and its ``total`` and ``unread_count`` in one statement, with only the filters in use.

    Filters are spelled into the text rather than written ``($n IS NULL OR ...)``, so every combination
    gets its own plan: unread-only pages use the partial index, the cursor is an index bound on the
    primary key (user_id, seq).
    """
    args: list[Any] = [user_id]
    conditions = ["user_id = $1"]
    if params.unread_only:
        conditions.append("read_at IS NULL")
    if params.types is not None:
        args.append(params.types)
        conditions.append(f"type = ANY(${len(args)}::text[])")
    if params.categories is not None:
        args.append(params.categories)
        conditions.append(f"category = ANY(${len(args)}::text[])")
    filters = " AND ".join(conditions)
    unread = "COALESCE((SELECT unread_count FROM users WHERE user_id = $1), 0)"
    # The maintained counter answers "how many unread" without counting; other totals count rows.
    total = (
        unread
        if len(conditions) == 2 and params.unread_only
        else (f"(SELECT count(*) FROM notifications WHERE {filters})")
    )
    page = filters
    if params.before is not None:
        args.append(params.before)
        page += f" AND seq < ${len(args)}"
    args.append(params.limit + 1)  # one more than asked tells whether another page exists
    sql = f"""
SELECT s.total, s.unread_count, p.*
  FROM (SELECT {total} AS total, {unread} AS unread_count) AS s
  LEFT JOIN LATERAL (
        SELECT {NOTIFICATION_COLUMNS} FROM notifications
         WHERE {page}
         ORDER BY seq DESC
         LIMIT ${len(args)}) AS p ON true
 ORDER BY p.seq DESC
"""
    return sql, args


@dataclass(frozen=True, slots=True)
class Page:
    """Up to ``limit + 1`` notifications, newest first, and the counts the page reports."""

    items: list[dict[str, Any]]
    total: int
    unread_count: int


async def list_page(pool: asyncpg.Pool, params: PageQuery, user_id: str) -> Page:
    """Run :func:`list_query`: the page (one extra item when another page exists) and its counts."""
    sql, args = list_query(params, user_id)
    rows = await pool.fetch(sql, *args)
    items = [notification_json(row) for row in rows if row["seq"] is not None]
    return Page(items, rows[0]["total"], rows[0]["unread_count"])


async def sync(pool: asyncpg.Pool, user_id: str, since: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` notifications after seq ``since``, oldest first."""
    return [notification_json(row) for row in await pool.fetch(_SYNC, user_id, since, limit)]


async def unread_count(pool: asyncpg.Pool, user_id: str) -> int:
    """The maintained unread counter (0 for an unknown user)."""
    count: int | None = await pool.fetchval(UNREAD_COUNT, user_id)
    return count or 0


@dataclass(frozen=True, slots=True)
class Change:
    """What a mutation did: rows changed, their ids (when collected), the unread counter after it."""

    changed: int
    ids: list[str]
    unread_count: int


async def mark_read(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Mark the user's unread ``ids`` read."""
    return await _mutate(pool, _MARK_READ, user_id, ids)


async def mark_unread(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Mark the user's read ``ids`` unread."""
    return await _mutate(pool, _MARK_UNREAD, user_id, ids)


async def delete(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Delete the user's ``ids``."""
    return await _mutate(pool, _DELETE, user_id, ids)


async def mark_all_read(pool: asyncpg.Pool, user_id: str) -> Change:
    """Mark every unread notification of the user read (ids are not collected)."""
    return await _mutate(pool, _MARK_ALL_READ, user_id)


async def _mutate(pool: asyncpg.Pool, sql: str, *args: Any) -> Change:
    """Run one ``_mutation`` statement (autocommit), retrying a deadlock a few times."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            row = await pool.fetchrow(sql, *args)
            break
        except asyncpg.DeadlockDetectedError:
            if attempt == DEADLOCK_RETRIES - 1:
                raise
    assert row is not None
    return Change(row["changed"], list(row["ids"]), row["unread_count"])
