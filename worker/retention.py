"""Retention: delete notifications and final email/push jobs older than ``HERALD_RETENTION_DAYS``, one
worker at a time.

Every ``retention_interval_seconds`` each worker tries a session-level advisory lock; the one that gets it
deletes in short transactions of ``retention_batch_size`` rows
(:func:`worker.store.retention.retention_batch`), so inserts for the affected users wait at most one small
statement, then the final jobs in statements of as many (:func:`worker.store.retention.delete_final_jobs`),
and releases the lock.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
import structlog

from worker import metrics
from worker.store.pool import is_outage
from worker.store.retention import delete_final_jobs, retention_batch, retention_lock

if TYPE_CHECKING:
    from shared.settings import Settings

log = structlog.get_logger("herald.retention")


async def retention_pass(pool: asyncpg.Pool, days: int, batch_size: int) -> int | None:
    """Delete everything older than ``days``; how many notifications (``None`` when another worker holds
    the lock)."""
    async with pool.acquire() as conn, retention_lock(conn) as held:
        if not held:
            return None
        total = 0
        while True:
            batch = await retention_batch(conn, days, batch_size)
            total += batch.deleted
            metrics.RETENTION_DELETED.inc(batch.deleted)
            if batch.recounted:
                # A writer that did not maintain them ran (docs/operations.md, "Zero-downtime upgrades").
                log.warning("retention recounted drifted counters", users=batch.recounted)
            if batch.deleted < batch_size:
                break
        jobs = 0
        while True:
            deleted = await delete_final_jobs(conn, days, batch_size)
            jobs += deleted
            if deleted < batch_size:
                break
        if jobs:
            log.info("retention pass: delivery jobs", deleted=jobs, days=days)
        return total


async def retention_loop(pool: asyncpg.Pool, settings: Settings) -> None:
    """Run :func:`retention_pass` now and then every interval, until cancelled; errors wait a turn."""
    while True:
        try:
            deleted = await retention_pass(pool, settings.retention_days, settings.retention_batch_size)
        except Exception as exc:
            if is_outage(exc):
                log.warning("retention pass skipped", error=repr(exc))
            elif isinstance(exc, asyncpg.PostgresError):
                log.exception("retention pass failed")
            else:
                raise
        else:
            if deleted:
                log.info("retention pass", deleted=deleted, days=settings.retention_days)
        await asyncio.sleep(settings.retention_interval_seconds)
