"""Reading the notification catalog (``notification_types``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.preferences import Catalog, NotificationType

if TYPE_CHECKING:
    import asyncpg


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
