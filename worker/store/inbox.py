"""The SQL of a user's inbox reads: the session counters, pages, sync (the changes: ``mutations.py``).

Every statement is scoped by the caller's verified user id. Expired notifications are not listed, synced
or counted: reads filter them out, and counts are the maintained counters (``users.unread_count``,
``users.unseen_count``, ``users.inbox_count``) minus the user's expired rows that retention has not
deleted yet, found through partial indexes on ``expires_at`` (so a count never scans the user's
notifications).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from worker.store.notifications import (
    EXPIRED_INBOX,
    EXPIRED_UNREAD,
    EXPIRED_UNSEEN,
    NOTIFICATION_COLUMNS,
    live,
    notification_json,
)
from worker.store.preferences import StoredPreferences, overrides_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg


def _for_each_user(correction: str) -> str:
    """A counter correction written for one user (``$1``), for the ``u.user_id`` of each row instead."""
    return correction.replace("user_id = $1", "user_id = u.user_id")


# Make the users known and read their counters and overrides, for many users at once (a connect storm
# is answered in a few statements); users rows are created in id order, as every other writer takes them.
_OPEN_SESSIONS: Final = f"""
WITH created AS (
    INSERT INTO users (user_id) SELECT DISTINCT unnest($1::text[]) ORDER BY 1
    ON CONFLICT (user_id) DO NOTHING
    RETURNING user_id, last_seq, unread_count, unseen_count
)
SELECT u.user_id, u.last_seq, u.unread_count - {_for_each_user(EXPIRED_UNREAD)} AS unread_count,
       u.unseen_count - {_for_each_user(EXPIRED_UNSEEN)} AS unseen_count,
       p.channels, p.types, p.quiet_hours, p.updated_at
  FROM (SELECT user_id, last_seq, unread_count, unseen_count FROM created
        UNION ALL
        SELECT user_id, last_seq, unread_count, unseen_count FROM users WHERE user_id = ANY($1::text[])) AS u
  LEFT JOIN LATERAL (  -- a probe per user in any plan (worker.store.events, _EXISTING)
       SELECT channels, types, quiet_hours, updated_at FROM user_preferences s WHERE s.user_id = u.user_id
        LIMIT 1) AS p ON true
"""

UNREAD_COUNT: Final = f"""
SELECT unread_count - {EXPIRED_UNREAD} AS unread_count, unseen_count - {EXPIRED_UNSEEN} AS unseen_count,
       last_seq
  FROM users WHERE user_id = $1"""

_SYNC: Final = f"""
SELECT {NOTIFICATION_COLUMNS} FROM notifications
 WHERE user_id = $1 AND seq > $2 AND {live()}
 ORDER BY seq
 LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class Session:
    """A user's counters and stored preferences, as ``session.open`` reads them."""

    unread_count: int
    unseen_count: int
    last_seq: int
    preferences: StoredPreferences


async def open_sessions(pool: asyncpg.Pool, user_ids: Sequence[str]) -> dict[str, Session]:
    """Make the users known (create missing ``users`` rows); their counters and overrides, by user id."""
    sessions: dict[str, Session] = {}
    missing = list(user_ids)
    # A row another connection inserted after the first statement's snapshot is read by the second.
    for _ in range(2):
        for row in await pool.fetch(_OPEN_SESSIONS, missing):
            sessions[row["user_id"]] = Session(
                row["unread_count"],
                row["unseen_count"],
                row["last_seq"],
                StoredPreferences(overrides_of(row), row["updated_at"]),
            )
        missing = [user_id for user_id in missing if user_id not in sessions]
        if not missing:
            return sessions
    raise RuntimeError(f"users rows not found after insert: {missing[:5]}")


class PageQuery(Protocol):
    """What selects a page of ``notifications.list`` (its params model has these fields)."""

    @property
    def limit(self) -> int: ...
    @property
    def before(self) -> int | None: ...
    @property
    def page(self) -> int | None: ...
    @property
    def unread_only(self) -> bool: ...
    @property
    def archived(self) -> bool | None: ...
    @property
    def types(self) -> Sequence[str] | None: ...
    @property
    def categories(self) -> Sequence[str] | None: ...


def list_query(params: PageQuery, user_id: str) -> tuple[str, list[Any]]:
    """The page and its ``total`` and ``unread_count`` in one statement, with only the filters in use.

    Filters are spelled into the text rather than written ``($n IS NULL OR ...)``, so every combination
    gets its own plan: unread-only pages use the partial index, the cursor is an index bound on the
    primary key (user_id, seq). A ``page`` beyond the first skips rows with ``OFFSET``.
    """
    args: list[Any] = [user_id]
    conditions = ["user_id = $1", live()]
    if params.archived is not None:
        conditions.append("archived_at IS NOT NULL" if params.archived else "archived_at IS NULL")
    if params.unread_only:
        conditions.append("read_at IS NULL")
    if params.types is not None:
        args.append(params.types)
        conditions.append(f"type = ANY(${len(args)}::text[])")
    if params.categories is not None:
        args.append(params.categories)
        conditions.append(f"category = ANY(${len(args)}::text[])")
    filters = " AND ".join(conditions)
    unread = f"(COALESCE((SELECT unread_count FROM users WHERE user_id = $1), 0) - {EXPIRED_UNREAD})"
    unseen = f"(COALESCE((SELECT unseen_count FROM users WHERE user_id = $1), 0) - {EXPIRED_UNSEEN})"
    inbox = f"(COALESCE((SELECT inbox_count FROM users WHERE user_id = $1), 0) - {EXPIRED_INBOX})"
    last_seq = "COALESCE((SELECT last_seq FROM users WHERE user_id = $1), 0)"
    # The maintained counters answer the two totals every page load asks for, "unread, archived or not"
    # and "the inbox" (not archived), without counting; other filters count their rows.
    maintained: dict[tuple[str, ...], str] = {("read_at IS NULL",): unread, ("archived_at IS NULL",): inbox}
    total = maintained.get(tuple(conditions[2:]), f"(SELECT count(*) FROM notifications WHERE {filters})")
    page = filters
    if params.before is not None:
        args.append(params.before)
        page += f" AND seq < ${len(args)}"
    args.append(params.limit + 1)  # one more than asked tells whether another page exists
    limit = f"LIMIT ${len(args)}"
    if params.page is not None and params.page > 1:
        args.append((params.page - 1) * params.limit)
        limit += f" OFFSET ${len(args)}"
    sql = f"""
SELECT s.total, s.unread_count, s.unseen_count, s.last_seq, p.*
  FROM (SELECT {total} AS total, {unread} AS unread_count, {unseen} AS unseen_count,
               {last_seq} AS last_seq) AS s
  LEFT JOIN LATERAL (
        SELECT {NOTIFICATION_COLUMNS} FROM notifications
         WHERE {page}
         ORDER BY seq DESC
         {limit}) AS p ON true
 ORDER BY p.seq DESC
"""
    return sql, args


@dataclass(frozen=True, slots=True)
class Page:
    """Up to ``limit + 1`` notifications, newest first, the counts the page reports and the ``last_seq``
    they were read with (one statement, one snapshot)."""

    items: list[dict[str, Any]]
    total: int
    unread_count: int
    unseen_count: int
    last_seq: int


async def list_page(pool: asyncpg.Pool, params: PageQuery, user_id: str) -> Page:
    """Run :func:`list_query`: the page (one extra item when another page exists) and its counts."""
    sql, args = list_query(params, user_id)
    rows = await pool.fetch(sql, *args)
    items = [notification_json(row) for row in rows if row["seq"] is not None]
    first = rows[0]
    return Page(items, first["total"], first["unread_count"], first["unseen_count"], first["last_seq"])


async def sync(pool: asyncpg.Pool, user_id: str, since: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` notifications after seq ``since``, oldest first."""
    return [notification_json(row) for row in await pool.fetch(_SYNC, user_id, since, limit)]


@dataclass(frozen=True, slots=True)
class Counts:
    """A user's visible counts and the highest ``seq`` stored for them, read in one statement."""

    unread: int
    unseen: int
    #: Lets a client that has no watermark yet anchor one (docs/protocol.md amendment 42).
    last_seq: int


async def counts(pool: asyncpg.Pool, user_id: str) -> Counts:
    """The visible counts and ``last_seq`` (all 0 for an unknown user)."""
    row = await pool.fetchrow(UNREAD_COUNT, user_id)
    if row is None:
        return Counts(0, 0, 0)
    return Counts(row["unread_count"], row["unseen_count"], row["last_seq"])
