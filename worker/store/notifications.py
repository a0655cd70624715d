"""The columns every notification read selects, the client-facing object of such a row, and the SQL
conditions every read and count shares (expiry)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncpg

# Column list every notification read uses, in the order :func:`notification_json` expects.
NOTIFICATION_COLUMNS: Final = (
    "id, seq, type, category, title, message, data, url, actions, count, created_at, read_at, seen_at, "
    "archived_at, acted_at, action_id, expires_at"
)
#: The fields of a Notification object (docs/protocol.md §5 and §10), in column order.
NOTIFICATION_FIELDS: Final = tuple(name.strip() for name in NOTIFICATION_COLUMNS.split(","))


def live(table: str = "notifications") -> str:
    """The condition "``table``'s row has not expired" (``now()`` is the transaction's start, the same
    for every part of one statement). Expired rows stay until retention deletes them, invisible to every
    read, count and change."""
    return f"({table}.expires_at IS NULL OR {table}.expires_at > now())"


# What the maintained counters include but the user must not see: expired rows not deleted yet. Each is
# an index range scan over that user's expired rows only (sql/004_inbox_states.sql,
# sql/008_inbox_count.sql), none for most users.
EXPIRED_UNREAD: Final = (
    "(SELECT count(*) FROM notifications "
    "WHERE user_id = $1 AND expires_at IS NOT NULL AND expires_at <= now() AND read_at IS NULL)"
)
EXPIRED_UNSEEN: Final = (
    "(SELECT count(*) FROM notifications "
    "WHERE user_id = $1 AND expires_at IS NOT NULL AND expires_at <= now() AND seen_at IS NULL)"
)
EXPIRED_INBOX: Final = (
    "(SELECT count(*) FROM notifications "
    "WHERE user_id = $1 AND expires_at IS NOT NULL AND expires_at <= now() AND archived_at IS NULL)"
)


_TIMESTAMPS: Final = frozenset({"created_at", "read_at", "seen_at", "archived_at", "acted_at", "expires_at"})


def notification_jsonb(table: str) -> str:
    """SQL for ``table``'s row as the Notification object :func:`notification_json` gives, in ``jsonb``
    with timestamps as RFC 3339 UTC strings (``Z``), as Herald's JSON encoding writes them
    (:func:`shared.jsonrpc.dumps`; it leaves out a zero fraction, this writes ``.000000``)."""

    def value(name: str) -> str:
        if name in _TIMESTAMPS:
            return f"""to_char({table}.{name} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
        return f"{table}.{name}"

    return "jsonb_build_object(" + ", ".join(f"'{name}', {value(name)}" for name in NOTIFICATION_FIELDS) + ")"


def notification_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The client-facing Notification object (docs/protocol.md §5, §10) of a ``notifications`` row.

    Datetimes stay ``datetime`` objects: orjson renders them as RFC 3339 when the frame is encoded.
    """
    return {name: row[name] for name in NOTIFICATION_FIELDS}
