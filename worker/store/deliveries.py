"""The SQL of ``delivery_jobs``: one state row per email/push job, claimed with a lease.

Jobs are *recorded* in batches by one set-based statement (:func:`record`): the worker's in the batch's
own transaction (an outbox: a job exists exactly when its notification was committed), ``herald-delivery``
for a job message a third party published. The statement wakes the delivery processes with ``NOTIFY``
(:data:`WAKE_CHANNEL`, payload = the job channel) when a recorded job is due now. A job is *claimed* in
batches by setting ``locked_until`` (``FOR UPDATE SKIP LOCKED`` lets many ``herald-delivery`` processes
claim side by side; the claim also reads the user's profile and, for a job that keeps no copy of its
notification, the in-app row: sql/009); the claimer sends and then writes the outcomes, again in batches.
Claiming also decides cancellation, race-free: a delayed job whose in-app copy was read or deleted by then
ends ``cancelled``, and so does a job without a copy whose in-app row retention deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from shared.events import PROFILE_FIELDS
from worker.store.notifications import notification_jsonb
from worker.store.pool import PLAN_WITH_VALUES

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from worker.broadcast_routing import BroadcastJobs
    from worker.store.pool import Connection
    from worker.writes import Job

#: The ``LISTEN``/``NOTIFY`` channel that tells ``herald-delivery`` jobs came due (payload: the job channel).
WAKE_CHANNEL: Final = "herald_delivery_jobs"

# The delay comes from the catalog; a delayed job with an in-app copy is cancelled if that is read or
# deleted before it is due. A job recorded before (same id) is left alone. A keyed job (amendments 14, 25)
# replaces the notification of its key's waiting row when its version is higher, keeping that row's due
# time, and is dropped when lower or equal; jobs without a key (in-app off, the old format) have a null
# key, which the partial unique index never matches. Due rows wake the delivery processes at commit.
_RECORD: Final = f"""
    WITH job AS (
        SELECT j.*, coalesce(CASE WHEN j.channel = 'email' THEN t.email_delay_seconds
                                  ELSE t.push_delay_seconds END, 0) AS delay
          FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                      $7::timestamptz[], $8::timestamptz[], $9::text[], $10::integer[])
               AS j(id, notification_id, user_id, channel, notification, type, created, deliver_after,
                    job_key, version)
          LEFT JOIN notification_types t ON t.name = j.type
    ), recorded AS (
        INSERT INTO delivery_jobs
               (id, notification_id, user_id, channel, notification, cancel_if_read, due_at, job_key, version)
        SELECT id, notification_id, user_id, channel, notification::jsonb, stored.found IS NOT NULL,
               greatest(coalesce(deliver_after, now()), created + make_interval(secs => delay)),
               job_key, version
          FROM job
          -- One index probe per job, in any plan (worker.store.events, _EXISTING): recorded before?
          LEFT JOIN LATERAL (SELECT true AS found FROM delivery_jobs d WHERE d.id = job.id LIMIT 1) AS seen
               ON true
          -- A keyed job whose version (or a later one) a row of its key already holds: merged into a
          -- waiting row that has been sent since, under that row's id (sql/010).
          LEFT JOIN LATERAL (
               SELECT true AS found FROM delivery_jobs d
                WHERE d.job_key = job.job_key AND d.version >= job.version LIMIT 1
               ) AS merged ON true
          -- Is the in-app copy there (only asked with a delay: reading it will cancel the job)?
          LEFT JOIN LATERAL (
               SELECT true AS found FROM notifications n
                WHERE job.delay > 0 AND n.user_id = job.user_id AND n.id = job.notification_id LIMIT 1
               ) AS stored ON true
         WHERE seen.found IS NULL AND merged.found IS NULL
        ON CONFLICT (job_key) WHERE status = 'scheduled' DO UPDATE
           SET notification = excluded.notification, version = excluded.version
         WHERE excluded.version > delivery_jobs.version
        RETURNING channel, due_at
    ), woken AS (
        SELECT pg_notify('{WAKE_CHANNEL}', channel) FROM recorded WHERE due_at <= now() GROUP BY channel
    )
    SELECT (SELECT count(*) FROM recorded) AS recorded, (SELECT count(*) FROM woken) AS woken"""

# A broadcast's jobs, straight into the table (no AMQP message each), paced by the rate caps. Same timing,
# cancellation and wake-up (NOTIFY for due rows, at commit) as _RECORD; a repeated broadcast inserts
# nothing twice.
_INSERT_WAITING: Final = f"""
    WITH inserted AS (
        INSERT INTO delivery_jobs
               (id, notification_id, user_id, channel, notification, cancel_if_read, due_at)
        SELECT $1 || ':' || j.user_id || ':' || j.channel, $1, j.user_id, j.channel, $2::jsonb,
               d.delay > 0
                   AND EXISTS (SELECT 1 FROM notifications n WHERE n.user_id = j.user_id AND n.id = $1),
               greatest(coalesce(j.deliver_after, now()), $4::timestamptz + make_interval(secs => d.delay))
          FROM unnest($5::text[], $6::text[], $7::timestamptz[]) AS j(user_id, channel, deliver_after)
          LEFT JOIN notification_types t ON t.name = $3
         CROSS JOIN LATERAL (SELECT coalesce(CASE WHEN j.channel = 'email' THEN t.email_delay_seconds
                                                  ELSE t.push_delay_seconds END, 0) AS delay) AS d
        ON CONFLICT (id) DO NOTHING
        RETURNING channel, due_at
    ), woken AS (
        SELECT pg_notify('{WAKE_CHANNEL}', channel) FROM inserted WHERE due_at <= now() GROUP BY channel
    )
    SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM woken) AS woken"""

# Up to $2 due jobs of channel $1, earliest first, each with its user's contact data (null when none) and,
# for a job without a copy of its notification (sql/009), the in-app row as that copy (the same jsonb
# notifications.delete writes into such jobs). Such a job whose row is gone (retention deleted it) has
# nothing to send: it ends cancelled, like a delayed job whose copy was read or deleted.
# `candidates` locks each row's latest version, but `decided` reads the rows from the statement's snapshot:
# a higher version merged in between (committed after the snapshot, before the lock) is not what is sent.
# So the claim returns the version its content came from (`seen_version`), never the locked row's, and
# _FINISH leaves the newer version waiting as a job of its own (amendment 54); a cancellation decided on
# the older version leaves the newer one waiting too (released: the next claim decides it).
_CLAIM: Final = f"""
    WITH candidates AS (
        SELECT id FROM delivery_jobs
         WHERE channel = $1 AND status = 'scheduled' AND due_at <= now()
           AND (locked_until IS NULL OR locked_until <= now())
         ORDER BY due_at LIMIT $2
           FOR UPDATE SKIP LOCKED
    ), decided AS (
        SELECT j.id, j.user_id, j.version AS seen_version, coalesce(j.notification, s.copy) AS notification,
               (j.cancel_if_read AND NOT EXISTS (
                   SELECT 1 FROM notifications n
                    WHERE n.user_id = j.user_id AND n.id = j.notification_id AND n.read_at IS NULL))
               OR (j.notification IS NULL AND s.copy IS NULL) AS cancel
          FROM candidates c JOIN delivery_jobs j USING (id)
          LEFT JOIN LATERAL (
               SELECT {notification_jsonb("n")} AS copy FROM notifications n
                WHERE j.notification IS NULL AND n.user_id = j.user_id AND n.id = j.notification_id LIMIT 1
               ) AS s ON true
    )
    UPDATE delivery_jobs j
       SET status = CASE WHEN d.cancel AND j.version IS NOT DISTINCT FROM d.seen_version THEN 'cancelled'
                         ELSE j.status END,
           attempts = j.attempts + CASE WHEN d.cancel THEN 0 ELSE 1 END,
           claims = j.claims + 1,
           locked_until = CASE WHEN d.cancel THEN NULL ELSE now() + make_interval(secs => $3) END
      FROM decided d LEFT JOIN user_profiles p ON p.user_id = d.user_id
     WHERE j.id = d.id
    RETURNING j.id, j.user_id, j.channel, d.notification, j.attempts, d.cancel AS cancelled,
              d.seen_version AS version, p.email, p.name, p.locale, p.timezone, j.claims"""

# The outcomes of a batch of sends. A retry ($5 not null: seconds until due) releases the lease and keeps
# the row scheduled. A final state is written for the version sent ($4); a higher version that replaced
# the row while it was being sent is a job of its own: the row stays scheduled, due at once, with it.
# Only the claim that sent it writes (`claims` = $6, the row's claim count that claim set): a holder whose
# lease ran out and was claimed again must not release the new holder's lease. Not `attempts`, which the
# version case below resets: a later claim could count as many attempts as the stale one (sql/012).
_FINISH: Final = """
    UPDATE delivery_jobs j
       SET status = CASE WHEN o.retry_in IS NOT NULL OR j.version IS DISTINCT FROM o.version
                         THEN j.status ELSE o.status END,
           last_error = CASE WHEN o.retry_in IS NULL AND j.version IS DISTINCT FROM o.version
                             THEN NULL ELSE o.error END,
           attempts = CASE WHEN o.retry_in IS NULL AND j.version IS DISTINCT FROM o.version
                           THEN 0 ELSE j.attempts END,
           due_at = CASE WHEN o.retry_in IS NOT NULL THEN now() + make_interval(secs => o.retry_in)
                         ELSE j.due_at END,
           locked_until = NULL,
           sent_at = CASE WHEN o.retry_in IS NULL AND o.status = 'sent' THEN now() ELSE j.sent_at END
      FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::float8[], $6::bigint[])
           AS o(id, status, error, version, retry_in, claims)
     WHERE j.id = o.id AND j.claims = o.claims"""

# The leases of jobs still in flight (waiting for a connection or the rate cap, or being sent), renewed
# while their process lives: a lease runs out only when its holder died. Fenced like _FINISH.
_EXTEND: Final = """
    UPDATE delivery_jobs j
       SET locked_until = now() + make_interval(secs => $3)
      FROM unnest($1::text[], $2::bigint[]) AS h(id, claims)
     WHERE j.id = h.id AND j.claims = h.claims AND j.status = 'scheduled'"""

_LIST: Final = """
    SELECT id, notification_id, user_id, channel, status, attempts, last_error, due_at, sent_at, created_at
      FROM delivery_jobs
     WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)
       AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
     ORDER BY created_at DESC, id DESC
     LIMIT $5"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job this process holds the lease of (or, ``cancelled``, has just cancelled)."""

    id: str
    user_id: str
    channel: str
    notification: dict[str, Any]
    attempts: int
    cancelled: bool
    #: The version of ``notification`` (``None``: a job without a key); the row may hold a newer one by now.
    version: int | None
    #: The user's contact data (``email``, ``name``, ``locale``, ``timezone``; ``None`` when unknown).
    profile: dict[str, Any]
    #: The row's claim count as this claim set it: the fence of this holder's lease (sql/012).
    claims: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The outcome of one attempt to write: a final ``status`` (with its error), or a retry in
    ``retry_in`` seconds (``status`` is then ignored)."""

    job: Claimed
    status: str
    error: str | None
    retry_in: float | None = None


async def record(conn: Connection | asyncpg.Pool, jobs: Sequence[Job]) -> int:
    """Record ``jobs`` (new ones, or higher versions replacing waiting rows); how many rows changed.

    Several processes may record versions of one key at once: the partial unique index on waiting keys
    serializes them. Two recording the same new id at once: the loser raises ``UniqueViolationError``
    (the worker retries its batch, which then finds the row).
    """
    if not jobs:
        return 0
    columns = (
        [job.id for job in jobs],
        [job.notification_id for job in jobs],
        [job.user_id for job in jobs],
        [job.channel for job in jobs],
        [job.notification for job in jobs],
        [job.type for job in jobs],
        [job.created_at for job in jobs],
        [job.deliver_after for job in jobs],
        [job.job_key for job in jobs],
        [job.version for job in jobs],
    )
    recorded: int = await conn.fetchval(_RECORD, *columns)
    return recorded


async def insert_waiting(conn: Connection, jobs: BroadcastJobs) -> int:
    """Record a broadcast's email/push jobs (due ones wake herald-delivery at commit); how many were new."""
    if not jobs.jobs:
        return 0
    notification = jobs.notification
    users, channels, held = (list(column) for column in zip(*jobs.jobs, strict=True))
    inserted: int = await conn.fetchval(
        _INSERT_WAITING,
        notification["id"],
        notification,
        notification["type"],
        datetime.fromisoformat(notification["created_at"]),
        users,
        channels,
        held,
    )
    return inserted


async def claim_due(pool: asyncpg.Pool, channel: str, limit: int, lease: float) -> list[Claimed]:
    """Claim up to ``limit`` due jobs of ``channel``, earliest first (cancelled ones included)."""
    rows = await pool.fetch(_CLAIM, channel, limit, lease)
    return [
        Claimed(
            row["id"],
            row["user_id"],
            row["channel"],
            row["notification"] or {},  # empty: cancelled, the in-app row is gone
            row["attempts"],
            row["cancelled"],
            row["version"],
            {name: row[name] for name in PROFILE_FIELDS},
            row["claims"],
        )
        for row in rows
    ]


async def finish(pool: asyncpg.Pool, outcomes: Sequence[Finished]) -> None:
    """Write the outcomes of a batch of attempts in one statement, releasing their leases."""
    await pool.execute(
        _FINISH,
        [o.job.id for o in outcomes],
        [o.status for o in outcomes],
        [o.error for o in outcomes],
        [o.job.version for o in outcomes],
        [o.retry_in for o in outcomes],
        [o.job.claims for o in outcomes],
    )


async def extend_leases(pool: asyncpg.Pool, held: Sequence[Claimed], lease: float) -> None:
    """Renew the leases of ``held`` (jobs this process claimed and has not finished) for ``lease`` seconds."""
    await pool.execute(_EXTEND, [job.id for job in held], [job.claims for job in held], lease)


async def listen(dsn: str, woken: Callable[[str], None]) -> asyncpg.Connection:
    """A connection of its own that calls ``woken(job channel)`` for every notification on
    :data:`WAKE_CHANNEL` (``LISTEN`` holds session state: it cannot be a pool connection)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.add_listener(WAKE_CHANNEL, lambda _conn, _pid, _channel, payload: woken(payload))
    except BaseException:
        await conn.close()
        raise
    return conn


async def list_jobs(
    pool: asyncpg.Pool,
    *,
    user_id: str | None,
    status: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Jobs newest first, filtered; ``before`` is the ``(created_at, id)`` of the last row of a page."""
    after_at, after_id = before if before else (None, None)
    async with pool.acquire() as conn, conn.transaction():
        # The filters are optional ("$1 IS NULL OR ..."): only a plan made with the values uses an index.
        await conn.execute(PLAN_WITH_VALUES)
        rows = await conn.fetch(_LIST, user_id, status, after_at, after_id, limit)
    return [dict(row) for row in rows]
