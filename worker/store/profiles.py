"""The SQL of ``user_profiles``: contact data from ``user.profile`` events, read by requests and senders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from shared.events import PROFILE_FIELDS

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    import asyncpg

    from worker.store.pool import Connection


def _upsert() -> str:
    """``INSERT ... ON CONFLICT DO UPDATE`` of one event: $2..$5 the values, $6 the names of the fields the
    event carried, $7 its ``changed_at`` (``NULL``: now).

    A field the event did not carry keeps its value. One it carried is stored with the time it changed at
    (``<field>_changed_at``), unless the row holds a later change of that field: an event redelivered after
    a newer one (it waited out an outage in the broker) then leaves that field alone, and the other fields
    it carried still apply. A row with no field to change is not written at all. Built from
    :data:`~shared.events.PROFILE_FIELDS` so the four fields cannot drift apart.
    """
    carried = "'{0}' = ANY($6::text[])"
    applies = f"{carried} AND (p.{{0}}_changed_at IS NULL OR p.{{0}}_changed_at <= EXCLUDED.{{0}}_changed_at)"
    columns = ", ".join((*PROFILE_FIELDS, *(f"{name}_changed_at" for name in PROFILE_FIELDS)))
    changed_at = ", ".join(
        f"CASE WHEN {carried.format(name)} THEN coalesce($7, now()) END" for name in PROFILE_FIELDS
    )
    updates = "".join(
        f"{name} = CASE WHEN {applies.format(name)} THEN EXCLUDED.{name} ELSE p.{name} END,\n"
        f"{name}_changed_at = CASE WHEN {applies.format(name)} THEN EXCLUDED.{name}_changed_at"
        f" ELSE p.{name}_changed_at END,\n"
        for name in PROFILE_FIELDS
    )
    anything = " OR ".join(f"({applies.format(name)})" for name in PROFILE_FIELDS)
    return (
        f"INSERT INTO user_profiles AS p (user_id, {columns}) VALUES ($1, $2, $3, $4, $5, {changed_at})\n"
        f"ON CONFLICT (user_id) DO UPDATE SET\n{updates}updated_at = now()\nWHERE {anything}"
    )


_UPSERT: Final = _upsert()

_GET: Final = "SELECT email, name, locale, timezone, updated_at FROM user_profiles WHERE user_id = $1"


async def upsert_profile(
    conn: Connection | asyncpg.Pool,
    user_id: str,
    changes: Mapping[str, Any],
    changed_at: datetime | None = None,
) -> None:
    """Apply one ``user.profile`` event's ``changes`` (field → value, ``None`` clears) as of ``changed_at``
    (``None``: now); a field whose stored change is later is left alone (see :func:`_upsert`)."""
    await conn.execute(
        _UPSERT, user_id, *(changes.get(name) for name in PROFILE_FIELDS), list(changes), changed_at
    )


async def get_profile(conn: Connection | asyncpg.Pool, user_id: str) -> dict[str, Any]:
    """The user's profile; every field ``None`` (and ``updated_at`` too) when no event arrived yet."""
    row = await conn.fetchrow(_GET, user_id)
    if row is None:
        return {"user_id": user_id, **dict.fromkeys(PROFILE_FIELDS), "updated_at": None}
    return {"user_id": user_id, **dict(row)}
