"""The SQL of ``delivery_jobs``: one state row per email/push job, claimed with a lease.

A job is *claimed* by setting ``locked_until`` (``FOR UPDATE SKIP LOCKED`` lets many ``herald-delivery``
processes claim side by side); the claimer sends and then writes the outcome. Claiming also decides
cancellation, race-free: a delayed job whose in-app copy was read or deleted by then ends ``cancelled``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import asyncpg

if TYPE_CHECKING:
    from worker.broadcast_routing import BroadcastJobs
    from worker.delivery.jobs import JobMessage
    from worker.store.pool import Connection

# The delay comes from the catalog; a delayed job with an in-app copy is cancelled if that is read or
# deleted before it is due. A job due now is inserted already claimed (the caller sends it at once).
# {conflict} is what a job recorded before does: an old-format job (no key) is recorded once by id; a keyed
# job (amendments 14, 25) replaces the notification of its key's waiting row when its version is higher,
# keeping that row's due time, and is dropped when lower or equal. ``claimed`` is true only for an insert.
_SCHEDULE_TEMPLATE: Final = """
    WITH job AS (
        SELECT coalesce((SELECT CASE WHEN $4 = 'email' THEN t.email_delay_seconds
                                     ELSE t.push_delay_seconds END
                           FROM notification_types t WHERE t.name = $6), 0) AS delay,
               $7::timestamptz AS created, $8::timestamptz AS deliver_after
    ), timed AS (
        SELECT delay, greatest(coalesce(deliver_after, now()), created + make_interval(secs => delay)) AS due
          FROM job
    )
    INSERT INTO delivery_jobs
           (id, notification_id, user_id, channel, notification, cancel_if_read, attempts, due_at,
            locked_until, job_key, version)
    SELECT $1, $2, $3, $4, $5::jsonb,
           delay > 0 AND EXISTS (SELECT 1 FROM notifications n WHERE n.user_id = $3 AND n.id = $2),
           CASE WHEN due <= now() THEN 1 ELSE 0 END, due,
           CASE WHEN due <= now() THEN now() + make_interval(secs => $9) END, $10::text, $11::integer
      FROM timed
     WHERE NOT EXISTS (SELECT 1 FROM delivery_jobs d WHERE d.id = $1)
    {conflict}
    RETURNING xmax = 0 AND locked_until IS NOT NULL AS claimed"""
_SCHEDULE: Final = _SCHEDULE_TEMPLATE.format(conflict="ON CONFLICT (id) DO NOTHING")
_SCHEDULE_KEYED: Final = _SCHEDULE_TEMPLATE.format(
    conflict="""ON CONFLICT (job_key) WHERE status = 'scheduled' DO UPDATE
       SET notification = excluded.notification, version = excluded.version
     WHERE excluded.version > delivery_jobs.version"""
)

# A broadcast's jobs, straight into the table (no AMQP message each): the pollers send them, paced by the
# rate caps. Same timing and cancellation rule as _SCHEDULE; a repeated broadcast inserts nothing twice.
_INSERT_WAITING: Final = """
    INSERT INTO delivery_jobs (id, notification_id, user_id, channel, notification, cancel_if_read, due_at)
    SELECT $1 || ':' || j.user_id || ':' || j.channel, $1, j.user_id, j.channel, $2::jsonb,
           d.delay > 0 AND EXISTS (SELECT 1 FROM notifications n WHERE n.user_id = j.user_id AND n.id = $1),
           greatest(coalesce(j.deliver_after, now()), $4::timestamptz + make_interval(secs => d.delay))
      FROM unnest($5::text[], $6::text[], $7::timestamptz[]) AS j(user_id, channel, deliver_after)
      LEFT JOIN notification_types t ON t.name = $3
     CROSS JOIN LATERAL (SELECT coalesce(CASE WHEN j.channel = 'email' THEN t.email_delay_seconds
                                              ELSE t.push_delay_seconds END, 0) AS delay) AS d
    ON CONFLICT (id) DO NOTHING"""

# {where} picks the candidates: one job by id, or a channel's due jobs.
_CLAIM: Final = """
    WITH candidates AS (
        SELECT id FROM delivery_jobs
         WHERE {where} AND status = 'scheduled' AND due_at <= now()
           AND (locked_until IS NULL OR locked_until <= now())
         ORDER BY due_at LIMIT $2
           FOR UPDATE SKIP LOCKED
    ), decided AS (
        SELECT j.id, j.cancel_if_read AND NOT EXISTS (
                   SELECT 1 FROM notifications n
                    WHERE n.user_id = j.user_id AND n.id = j.notification_id AND n.read_at IS NULL) AS cancel
          FROM candidates c JOIN delivery_jobs j USING (id)
    )
    UPDATE delivery_jobs j
       SET status = CASE WHEN d.cancel THEN 'cancelled' ELSE j.status END,
           attempts = j.attempts + CASE WHEN d.cancel THEN 0 ELSE 1 END,
           locked_until = CASE WHEN d.cancel THEN NULL ELSE now() + make_interval(secs => $3) END
      FROM decided d
     WHERE j.id = d.id
    RETURNING j.id, j.user_id, j.channel, j.notification, j.attempts, d.cancel AS cancelled, j.version"""
_CLAIM_ONE: Final = _CLAIM.format(where="id = $1")
_CLAIM_DUE: Final = _CLAIM.format(where="channel = $1")

# A higher version that replaced the row while it was being sent ($4: the version sent) is a job of its
# own: the row stays scheduled, due at once, with the new notification.
_FINISH: Final = """
    UPDATE delivery_jobs
       SET status = CASE WHEN version IS DISTINCT FROM $4 THEN status ELSE $2 END,
           last_error = CASE WHEN version IS DISTINCT FROM $4 THEN NULL ELSE $3 END,
           attempts = CASE WHEN version IS DISTINCT FROM $4 THEN 0 ELSE attempts END,
           locked_until = NULL,
           sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END
     WHERE id = $1"""

_RETRY: Final = """
    UPDATE delivery_jobs
       SET last_error = $2, locked_until = NULL, due_at = now() + make_interval(secs => $3)
     WHERE id = $1"""

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
    #: The notification version the row held when claimed (``None``: a job without a key).
    version: int | None = None


def stored_version(job: JobMessage) -> int | None:
    """The version a job is recorded with: ``None`` for a job without ``job_key`` or ``version``, which
    is kept by its message id alone (the old format; nothing stored in-app)."""
    return job.version if job.job_key is not None else None


async def schedule(pool: asyncpg.Pool, job_id: str, job: JobMessage, lease: float) -> bool:
    """Record a job, or let it replace its key's waiting row; whether it was inserted claimed.

    A redelivered message changes nothing. Several processes may record versions of one key at once: the
    partial unique index on waiting keys serializes them, and a message id recorded meanwhile by another
    process (a concurrent redelivery) is "recorded before".
    """
    notification = job.notification
    version = stored_version(job)
    try:
        claimed: bool | None = await pool.fetchval(
            _SCHEDULE if version is None else _SCHEDULE_KEYED,
            job_id,
            notification.id,
            job.user_id,
            job.channel,
            notification.model_dump(mode="json"),
            notification.type,
            notification.created_at,
            job.deliver_after,
            lease,
            None if version is None else job.job_key,
            version,
        )
    except asyncpg.UniqueViolationError:
        return False
    return bool(claimed)


async def insert_waiting(conn: Connection, jobs: BroadcastJobs) -> int:
    """Record a broadcast's email/push jobs for the pollers; how many were new."""
    if not jobs.jobs:
        return 0
    notification = jobs.notification
    users, channels, held = (list(column) for column in zip(*jobs.jobs, strict=True))
    status: str = await conn.execute(
        _INSERT_WAITING,
        notification["id"],
        notification,
        notification["type"],
        datetime.fromisoformat(notification["created_at"]),
        users,
        channels,
        held,
    )
    return int(status.rsplit(" ", 1)[1])


def _claimed(row: asyncpg.Record) -> Claimed:
    return Claimed(**dict(row))


async def claim_one(pool: asyncpg.Pool, job_id: str, lease: float) -> Claimed | None:
    """Claim job ``job_id`` if it is scheduled, due and not claimed by anyone."""
    row = await pool.fetchrow(_CLAIM_ONE, job_id, 1, lease)
    return None if row is None else _claimed(row)


async def claim_due(pool: asyncpg.Pool, channel: str, limit: int, lease: float) -> list[Claimed]:
    """Claim up to ``limit`` due jobs of ``channel``, earliest first (cancelled ones included)."""
    return [_claimed(row) for row in await pool.fetch(_CLAIM_DUE, channel, limit, lease)]


async def finish(
    pool: asyncpg.Pool, job_id: str, status: str, error: str | None, version: int | None = None
) -> None:
    """Write a final state: ``sent``, ``skipped`` or ``failed`` (with its error) for the ``version`` sent;
    a row replaced by a higher version meanwhile stays scheduled for that version instead."""
    await pool.execute(_FINISH, job_id, status, error, version)


async def retry_later(pool: asyncpg.Pool, job_id: str, error: str, delay: float) -> None:
    """Release the lease and make the job due again in ``delay`` seconds."""
    await pool.execute(_RETRY, job_id, error, delay)


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
    rows = await pool.fetch(_LIST, user_id, status, after_at, after_id, limit)
    return [dict(row) for row in rows]
