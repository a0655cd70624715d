"""The columns every notification read selects, and the client-facing object of such a row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncpg

# Column list every notification read uses, in the order :func:`notification_json` expects.
NOTIFICATION_COLUMNS: Final = "id, seq, type, category, title, message, data, created_at, read_at"


def notification_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The client-facing Notification object (docs/protocol.md §5) of a ``notifications`` row.

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
