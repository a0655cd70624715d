"""The asyncpg pool and the catalog loader: the only place that knows connection-level details."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from shared.preferences import Catalog, NotificationType

if TYPE_CHECKING:
    from shared.settings import Settings

# Errors that say nothing about the data: the batch is kept unacked and retried after a pause.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # Class 53 (disk full, out of memory, too many connections) and a read-only server (a primary
    # demoted in a failover): the database cannot take writes now, whatever the event.
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """A pool whose connections encode and decode ``json``/``jsonb`` with orjson."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        init=_init_connection,
    )
    return pool


async def load_catalog(conn: asyncpg.Connection | asyncpg.Pool) -> Catalog:
    """Read ``notification_types`` (catalog order) into a :class:`Catalog`."""
    rows = await conn.fetch(
        """SELECT name, category, default_in_app, default_email, default_push, critical
             FROM notification_types ORDER BY position, name"""
    )
    return Catalog(
        NotificationType(
            name=row["name"],
            category=row["category"],
            defaults={
                "in_app": row["default_in_app"],
                "email": row["default_email"],
                "push": row["default_push"],
            },
            critical=row["critical"],
        )
        for row in rows
    )


# Column list every notification read uses, in the order :func:`notification_json` expects.
NOTIFICATION_COLUMNS = "id, seq, type, category, title, message, data, created_at, read_at"


def notification_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The client-facing Notification object (PROTOCOL §5) of a ``notifications`` row.

    Datetimes stay ``datetime`` objects: orjson renders them as RFC 3339 when the frame is encoded.
    """
    return {
        "id": row["id"],
        "seq": row["seq"],
        "type": row["type"],
        "category": row["category"],
        "title": row["title"],
        "message": row["message"],
        "data": row["data"],
        "created_at": row["created_at"],
        "read_at": row["read_at"],
    }
