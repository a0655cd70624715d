"""Retention: delete notifications older than ``HERALD_RETENTION_DAYS``, one worker at a time.

Every ``retention_interval_seconds`` each worker tries a session-level advisory lock; the one that gets it
deletes in short transactions of ``retention_batch_size`` rows (:func:`worker.store.retention_step`), so
inserts for the affected users wait at most one small statement, and releases the lock.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import asyncpg
import structlog

from worker import metrics, store
from worker.db import TRANSIENT_DB_ERRORS

if TYPE_CHECKING:
    from shared.settings import Settings

log = structlog.get_logger("herald.retention")

# Any constant; the same for every worker (and distinct from ``herald migrate``'s lock).
ADVISORY_LOCK_ID: Final = 0x4E7A1D_0002


async def retention_pass(pool: asyncpg.Pool, days: int, batch_size: int) -> int | None:
    """Delete everything older than ``days``; ``None`` when another worker holds the lock."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_ID):
            return None
        total = 0
        try:
            while True:
                deleted = await store.retention_step(conn, days, batch_size)
                total += deleted
                metrics.RETENTION_DELETED.inc(deleted)
                if deleted < batch_size:
                    return total
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)


async def retention_loop(pool: asyncpg.Pool, settings: Settings) -> None:
    """Run :func:`retention_pass` now and then every interval, until cancelled; errors wait a turn."""
    while True:
        try:
            deleted = await retention_pass(pool, settings.retention_days, settings.retention_batch_size)
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("retention pass skipped", error=repr(exc))
        except asyncpg.PostgresError:
            log.exception("retention pass failed")
        else:
            if deleted:
                log.info("retention pass", deleted=deleted, days=settings.retention_days)
        await asyncio.sleep(settings.retention_interval_seconds)
