"""The SQL of a user's inbox changes: read/unread, seen, archive, act, delete — each one statement.

Every statement is scoped by the caller's verified user id; ids belonging to someone else match no row, so
they are ignored exactly like ids that do not exist. Expired notifications are treated the same way: they
are gone for the user (retention deletes them later), so nothing changes them.

``users.unread_count``, ``users.unseen_count`` and ``users.inbox_count`` are maintained, never counted:
each mutation changes ``notifications`` and the counters in one statement (data-modifying CTEs). A
mutation first locks the user's ``users`` row (the ``locked`` CTE, which every changed row joins), so a
user's mutations are serialized and always take locks in the same order as the worker's inserts (users
row, then notifications): concurrent requests of one user cannot deadlock each other.

One statement has one snapshot, taken before it locks. Under READ COMMITTED a statement that had to wait
for the lock would change and count rows as they were before the writer it waited for committed (a
collapse gives a row a new ``seq``; retention deletes expired rows). Every writer of a user's
notifications also updates the user's ``users`` row (a counter or ``last_seq``), so the ``locked`` CTE
only takes the row if it is still the version of the statement's snapshot (same ``xmin``). When it is
not, the statement changes nothing, and :func:`_mutate` runs it again in a transaction that takes the lock
first: its snapshot then follows the lock. The uncontended case stays one round trip.

Reading an item also marks it seen, and closes its collapse group (``collapse_key`` = NULL: the next
event with that key starts a new notification, and marking this one unread again cannot clash with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from worker.store.notifications import EXPIRED_UNREAD, EXPIRED_UNSEEN, live, notification_jsonb
from worker.store.pool import LOCK_USER

if TYPE_CHECKING:
    from datetime import datetime

# This module's statements and the worker's inserts and retention lock users rows first, so they cannot
# deadlock one another; another writer locking in a different order (an operator's script) might, and
# that must not reach the client as an error.
DEADLOCK_RETRIES: Final = 3


def _mutation(changed: str, *, with_ids: bool = True, then: str = "") -> str:
    """One statement: lock the users row, change notifications (``changed``), adjust the counters.

    ``changed`` is a data-modifying statement over ``notifications AS n`` joined with ``locked`` and
    returning ``n.id``, ``n.seq``, ``unread_delta``, ``unseen_delta`` and ``inbox_delta`` (how the row
    changed each counter); ``$1`` is the user id. Joining ``locked`` means no notification row is
    locked before the users row. The result is one row: how many rows changed, their ids in seq order
    (empty unless ``with_ids``), the visible counts after the change (the counters minus expired
    rows, which no mutation touches, so the statement's snapshot of them is exact) and whether the users
    row was taken (``locked``: false when a writer committed since the snapshot, see the module
    docstring, or the user is unknown). ``then`` adds data-modifying CTEs over ``changed``
    (``, name AS (...)``).
    """
    ids = "ARRAY(SELECT id FROM changed ORDER BY seq)" if with_ids else "'{}'::text[]"
    return f"""
WITH locked AS (
    SELECT user_id, unread_count, unseen_count, last_seq FROM users
     WHERE user_id = $1 AND xmin = (SELECT xmin FROM users WHERE user_id = $1)
       FOR UPDATE
), changed AS (
    {changed}
){then}, counter AS (
    UPDATE users SET unread_count = unread_count + (SELECT sum(unread_delta) FROM changed),
                     unseen_count = unseen_count + (SELECT sum(unseen_delta) FROM changed),
                     inbox_count = inbox_count + (SELECT sum(inbox_delta) FROM changed)
     WHERE user_id = $1 AND EXISTS (SELECT FROM changed)
 RETURNING unread_count, unseen_count, last_seq
)
SELECT EXISTS (SELECT FROM locked) AS locked, (SELECT count(*) FROM changed) AS changed, {ids} AS ids,
       COALESCE((SELECT unread_count FROM counter), (SELECT unread_count FROM locked), 0)
           - {EXPIRED_UNREAD} AS unread_count,
       COALESCE((SELECT unseen_count FROM counter), (SELECT unseen_count FROM locked), 0)
           - {EXPIRED_UNSEEN} AS unseen_count,
       COALESCE((SELECT last_seq FROM counter), (SELECT last_seq FROM locked), 0) AS last_seq
"""


def _update(assignments: str, condition: str, deltas: str) -> str:
    """An UPDATE of the user's live rows matching ``condition`` over ``o``: those rows as they are before
    the change, so ``deltas`` may compare old and new.

    ``o`` is read ``FOR UPDATE``: the statement's snapshot predates the wait for the users lock, and a
    locking read returns (and re-checks ``condition`` on) each row's latest committed version, not the
    snapshot's, so a change committed meanwhile by another request is never counted twice.
    """
    return f"""UPDATE notifications AS n SET {assignments}
      FROM (SELECT o.seq, o.read_at, o.seen_at
              FROM notifications AS o JOIN locked ON o.user_id = locked.user_id
             WHERE {condition} AND {live("o")}
               FOR UPDATE OF o) AS o
     WHERE n.user_id = $1 AND n.seq = o.seq
 RETURNING n.id, n.seq, {deltas}"""


_BY_ID: Final = "o.id = ANY($2::text[])"
_READ: Final = "read_at = now(), seen_at = COALESCE(o.seen_at, now()), collapse_key = NULL"
_READ_DELTAS: Final = (
    "-1 AS unread_delta, CASE WHEN o.seen_at IS NULL THEN -1 ELSE 0 END AS unseen_delta, 0 AS inbox_delta"
)
_SEEN_DELTAS: Final = "0 AS unread_delta, -1 AS unseen_delta, 0 AS inbox_delta"

_MARK_READ: Final = _mutation(_update(_READ, f"{_BY_ID} AND o.read_at IS NULL", _READ_DELTAS))
# The event says "all", so the (possibly 100,000) ids are not collected.
_MARK_ALL_READ: Final = _mutation(_update(_READ, "o.read_at IS NULL", _READ_DELTAS), with_ids=False)
_MARK_UNREAD: Final = _mutation(
    _update(
        "read_at = NULL",
        f"{_BY_ID} AND o.read_at IS NOT NULL",
        "1 AS unread_delta, 0 AS unseen_delta, 0 AS inbox_delta",
    )
)
_MARK_SEEN: Final = _mutation(_update("seen_at = now()", f"{_BY_ID} AND o.seen_at IS NULL", _SEEN_DELTAS))
_MARK_ALL_SEEN: Final = _mutation(
    _update("seen_at = now()", "o.seen_at IS NULL", _SEEN_DELTAS), with_ids=False
)
_ARCHIVE: Final = _mutation(
    _update(
        "archived_at = now()",
        f"{_BY_ID} AND o.archived_at IS NULL",
        "0 AS unread_delta, 0 AS unseen_delta, -1 AS inbox_delta",
    )
)
_UNARCHIVE: Final = _mutation(
    _update(
        "archived_at = NULL",
        f"{_BY_ID} AND o.archived_at IS NOT NULL",
        "0 AS unread_delta, 0 AS unseen_delta, 1 AS inbox_delta",
    )
)
# A deleted notification's jobs still waiting without a copy (sql/009) get one, in the same statement:
# what they send must not depend on the inbox. Found by their waiting keys (worker.routing.job_key:
# <id>:<user>:<channel>) through the partial unique index; a delayed job among them is cancelled at its
# claim anyway, as the deletion is meant to do.
_DELETE: Final = _mutation(
    f"""DELETE FROM notifications AS n USING locked
     WHERE n.user_id = locked.user_id AND n.id = ANY($2::text[]) AND {live("n")}
 RETURNING n.id, n.seq, CASE WHEN n.read_at IS NULL THEN -1 ELSE 0 END AS unread_delta,
           CASE WHEN n.seen_at IS NULL THEN -1 ELSE 0 END AS unseen_delta,
           CASE WHEN n.archived_at IS NULL THEN -1 ELSE 0 END AS inbox_delta,
           {notification_jsonb("n")} AS copy""",
    then="""
, copied AS (
    UPDATE delivery_jobs j SET notification = c.copy
      FROM changed c
     WHERE j.job_key = ANY(ARRAY[c.id || ':' || $1 || ':email', c.id || ':' || $1 || ':push'])
       AND j.status = 'scheduled' AND j.notification IS NULL
)""",
)
# The first choice is final (acted_at IS NULL); acting reads the item, so it is seen too.
_ACT: Final = _mutation(
    _update(
        "acted_at = now(), action_id = $3, read_at = COALESCE(o.read_at, now()), "
        "seen_at = COALESCE(o.seen_at, now()), collapse_key = NULL",
        "o.id = $2 AND o.acted_at IS NULL "
        "AND o.actions @> jsonb_build_array(jsonb_build_object('id', $3::text))",
        "CASE WHEN o.read_at IS NULL THEN -1 ELSE 0 END AS unread_delta, "
        "CASE WHEN o.seen_at IS NULL THEN -1 ELSE 0 END AS unseen_delta, 0 AS inbox_delta",
    )
)
_ACTED: Final = f"""
SELECT id, type, data, actions, acted_at, action_id FROM notifications
 WHERE user_id = $1 AND id = $2 AND {live("notifications")}"""


@dataclass(frozen=True, slots=True)
class Change:
    """What a mutation did: rows changed, their ids (when collected), the visible counts after it and the
    user's ``last_seq`` they were read with (from the same users row: they count exactly the
    notifications up to it, which lets a client order counts against the frames it receives)."""

    changed: int
    ids: list[str]
    unread_count: int
    unseen_count: int
    last_seq: int

    def counts(self) -> dict[str, int]:
        """``{"unread_count", "unseen_count", "last_seq"}``: what every mutation's result and event carry."""
        return {
            "unread_count": self.unread_count,
            "unseen_count": self.unseen_count,
            "last_seq": self.last_seq,
        }


async def mark_read(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Mark the user's unread ``ids`` read (and seen)."""
    return await _mutate(pool, _MARK_READ, user_id, ids)


async def mark_unread(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Mark the user's read ``ids`` unread (they stay seen)."""
    return await _mutate(pool, _MARK_UNREAD, user_id, ids)


async def mark_all_read(pool: asyncpg.Pool, user_id: str) -> Change:
    """Mark every unread notification of the user read (ids are not collected)."""
    return await _mutate(pool, _MARK_ALL_READ, user_id)


async def mark_seen(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Mark the user's unseen ``ids`` seen."""
    return await _mutate(pool, _MARK_SEEN, user_id, ids)


async def mark_all_seen(pool: asyncpg.Pool, user_id: str) -> Change:
    """Mark every unseen notification of the user seen (ids are not collected)."""
    return await _mutate(pool, _MARK_ALL_SEEN, user_id)


async def archive(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Archive the user's ``ids`` (the counters do not change: archived items count as before)."""
    return await _mutate(pool, _ARCHIVE, user_id, ids)


async def unarchive(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Bring the user's archived ``ids`` back to the inbox."""
    return await _mutate(pool, _UNARCHIVE, user_id, ids)


async def delete(pool: asyncpg.Pool, user_id: str, ids: list[str]) -> Change:
    """Delete the user's ``ids``."""
    return await _mutate(pool, _DELETE, user_id, ids)


@dataclass(frozen=True, slots=True)
class Acted:
    """A notification's recorded action (or ``None`` fields), with what its outcome message carries."""

    id: str
    type: str
    data: dict[str, Any]
    action_ids: list[str]
    acted_at: datetime | None
    action_id: str | None


async def act(pool: asyncpg.Pool, user_id: str, notification_id: str, action_id: str) -> Change:
    """Record ``action_id`` on the user's live, not yet acted notification that offers it; read + seen."""
    return await _mutate(pool, _ACT, user_id, notification_id, action_id)


async def acted(pool: asyncpg.Pool, user_id: str, notification_id: str) -> Acted | None:
    """The user's live notification ``notification_id``'s actions and recorded choice; ``None`` if absent."""
    row = await pool.fetchrow(_ACTED, user_id, notification_id)
    if row is None:
        return None
    return Acted(
        row["id"],
        row["type"],
        row["data"],
        [action["id"] for action in row["actions"]],
        row["acted_at"],
        row["action_id"],
    )


async def _mutate(pool: asyncpg.Pool, sql: str, user_id: str, *args: Any) -> Change:
    """Run one ``_mutation`` statement, retrying a deadlock a few times: on its own (autocommit), and
    when a writer committed since its snapshot, again after taking the users lock (module docstring)."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            row = await pool.fetchrow(sql, user_id, *args)
            if row is not None and not row["locked"]:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(LOCK_USER, user_id)
                    row = await conn.fetchrow(sql, user_id, *args)
            break
        except asyncpg.DeadlockDetectedError:
            if attempt == DEADLOCK_RETRIES - 1:
                raise
    assert row is not None
    return Change(row["changed"], list(row["ids"]), row["unread_count"], row["unseen_count"], row["last_seq"])
