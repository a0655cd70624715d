"""The SQL of a broadcast: one chunk of known users at a time, each chunk its own short transaction.

A chunk is the next ``size`` known users in id order after the last user of the previous chunk
(``user_id > $after ORDER BY user_id LIMIT $size``), locked in that order like a batch locks its users
(``worker.store.events``), so a chunk and a batch never wait on each other in a cycle. In one statement the
chunk's users whose effective preferences allow the type in-app, minus those who already have the
broadcast's idempotency key, get their next ``seq``, one more unread, unseen and inbox item, and the row.
The same statement returns every user of the chunk with their stored overrides: who the broadcast may
email or push (``worker.broadcast_routing``).

A broadcast redelivered after a crash runs again from the first user: the check on the
idempotency key skips each user an earlier run stored, and their email/push jobs are already there
(``ON CONFLICT DO NOTHING``), so nothing is stored twice and nothing is lost. The same check finds the
``created_at`` of the copies that run stored: a chunk that meets one stores its new copies at that time,
not the new run's, and returns it for the rest of the broadcast (``worker.broadcasts``).

Every function takes a connection that is already inside a transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from worker.store.events import stored_overrides

if TYPE_CHECKING:
    from datetime import datetime

    from worker.routing import BroadcastRouting
    from worker.store.pool import Connection

#: Where the first chunk starts: every user id (1–128 characters) sorts after the empty string.
FIRST_USER_AFTER: Final = ""

# "May this user see type t in-app?" over users, notification_types t and user_preferences p (a left
# join: no row is no overrides). This is shared.preferences.decide_channels for "in_app", written for a
# set-based statement: a critical type's in-app is locked on; otherwise the master switch (default on)
# and the type's switch (default: the catalog's default_in_app) must both allow it.
# tests/integration/test_preference_rule_sql.py checks that the two agree on every combination.
IN_APP_ALLOWED: Final = """(t.critical
        OR (coalesce((p.channels ->> 'in_app')::boolean, true)
            AND coalesce((p.types -> t.name ->> 'in_app')::boolean, t.default_in_app)))"""

# The chunk's users' preferences, one index probe per user in any plan (worker.store.events, _EXISTING).
_PREFERENCES: Final = "SELECT * FROM user_preferences s WHERE s.user_id = c.user_id LIMIT 1"

# $11: created_at, the same for every copy (the one of the live frame) unless a copy of the chunk is
# already stored: an earlier run's (a redelivery after a crash), whose time every copy keeps (the earliest
# if copies disagree); $12/$13: the chunk; $14: muted (the event's channels exclude in-app: only the
# email/push audience is wanted); $15: the producer's source ('' for none), part of the key. "Already
# stored" is one index probe per user (LATERAL ... LIMIT 1 on (user_id, source, idempotency_key)); a key
# of NULL matches nothing. The time is returned as NULL when it is $11 (every chunk but the one that
# first meets an earlier run's copy): it is in every row, and 1,000 timestamps a chunk cost the client
# 0.6 ms to decode, most of the 1.1 ms per chunk that returning it always added (docs/performance.md).
# Written as "$7 IS NULL OR NOT EXISTS (...)" the planner hashed the subquery instead: a scan of every
# row with the key, so each chunk got slower as the broadcast grew (64 → 115 ms per 1,000 users, and
# 108 → 187 ms for a second broadcast; flat at 45-50 ms this way, docs/performance.md).
_CHUNK: Final = f"""
    WITH chunk AS (
        SELECT user_id
          FROM users
         WHERE user_id > $12
         ORDER BY user_id
         LIMIT $13
           FOR UPDATE
    ), stored_before AS (
        SELECT c.user_id, found.created_at
          FROM chunk c
          LEFT JOIN LATERAL (
                SELECT n.created_at FROM notifications n
                 WHERE n.user_id = c.user_id AND n.source = $15 AND n.idempotency_key = $7
                 LIMIT 1) found ON true
    ), stamp AS (
        SELECT coalesce(min(created_at), $11) AS created_at FROM stored_before
    ), recipients AS (
        SELECT c.user_id
          FROM stored_before c
          JOIN notification_types t ON t.name = $2
          LEFT JOIN LATERAL ({_PREFERENCES}) AS p ON true
         WHERE NOT $14::boolean
           AND {IN_APP_ALLOWED}
           AND c.created_at IS NULL
    ), bumped AS (
        UPDATE users u
           SET last_seq = u.last_seq + 1, unread_count = u.unread_count + 1,
               unseen_count = u.unseen_count + 1, inbox_count = u.inbox_count + 1
          FROM recipients r
         WHERE u.user_id = r.user_id
     RETURNING u.user_id, u.last_seq
    ), stored AS (
        INSERT INTO notifications
               (user_id, seq, id, type, category, title, message, data, idempotency_key, expires_at, url,
                actions, created_at, source)
        SELECT b.user_id, b.last_seq, $1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10::text::jsonb,
               s.created_at, $15
          FROM bumped b, stamp s
     RETURNING 1
    )
    SELECT c.user_id, p.channels, p.types, p.quiet_hours, pr.timezone,
           (SELECT count(*) FROM stored) AS stored, nullif((SELECT created_at FROM stamp), $11) AS created_at
      FROM chunk c
      LEFT JOIN LATERAL ({_PREFERENCES}) AS p ON true
      LEFT JOIN LATERAL (
           SELECT timezone FROM user_profiles s WHERE s.user_id = c.user_id LIMIT 1) AS pr ON true
     ORDER BY c.user_id"""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored chunk: its users' overrides (as :func:`worker.store.events.lock_users` returns them),
    in id order, how many of them got the in-app copy now, and the broadcast's ``created_at`` (an earlier
    run's when the chunk holds a copy it stored)."""

    audience: dict[str, dict[str, Any] | None]
    stored: int
    created_at: datetime

    @property
    def last_user(self) -> str | None:
        """The highest user id of the chunk (where the next one starts); ``None`` for an empty chunk."""
        return next(reversed(self.audience), None)


async def store_chunk(conn: Connection, routing: BroadcastRouting, after: str, size: int) -> Chunk:
    """Store ``routing``'s broadcast for the (at most) ``size`` known users after ``after``, in id order."""
    event = routing.event
    rows = await conn.fetch(
        _CHUNK,
        routing.notification_id,
        event.type,
        routing.category,
        event.title,
        event.message,
        routing.data_json,
        event.event_id,
        event.expires_at,
        routing.params["url"],
        routing.actions_json,
        routing.params["created_at"],
        after,
        size,
        routing.muted,
        event.source or "",
    )
    if not rows:  # no known user left: nothing stored, nothing found
        return Chunk({}, 0, routing.params["created_at"])
    audience = {row["user_id"]: stored_overrides(row) for row in rows}
    found = rows[0]["created_at"]  # NULL: this run's own
    return Chunk(audience, rows[0]["stored"], routing.params["created_at"] if found is None else found)
