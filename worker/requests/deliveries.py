"""``deliveries.list`` (admin): the state rows of email/push jobs, newest first (docs/protocol.md §9)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import orjson
from pydantic import Field, StringConstraints

from shared.events import USER_ID_PATTERN
from worker.requests.common import Method, Params, bad_param
from worker.store.deliveries import list_jobs

if TYPE_CHECKING:
    from worker.requests.common import Caller
    from worker.runtime import Runtime

MAX_PAGE: Final = 200
_FIELDS: Final = (
    "id",
    "notification_id",
    "user_id",
    "channel",
    "status",
    "attempts",
    "last_error",
    "due_at",
    "sent_at",
)


class DeliveriesListParams(Params):
    """Filters and a page: ``before`` is the ``next_cursor`` of the previous page."""

    user_id: Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)] | None = None
    status: Literal["scheduled", "sent", "skipped", "cancelled", "failed"] | None = None
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    before: Annotated[str, StringConstraints(max_length=512)] | None = None


def _cursor(row: dict[str, Any]) -> str:
    raw = orjson.dumps([row["created_at"].isoformat(), row["id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, id)`` a :func:`_cursor` holds; -32602 naming ``before`` for anything the query
    could not take: :func:`_cursor` writes an aware ``created_at`` (Postgres's ``timestamptz``) and a row
    id (text, which holds no NUL), so a naive or out-of-range instant (before year 1 or after 9999 once in
    UTC, where asyncpg converts it) and an id that is not a non-empty string without NUL were forged."""
    try:
        created_at, job_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(created_at)
        if at.tzinfo is None or not isinstance(job_id, str) or not job_id or "\x00" in job_id:
            raise ValueError("forged")
        return at.astimezone(UTC), job_id
    except (binascii.Error, ValueError, TypeError, OverflowError):
        raise bad_param("before", "not a cursor from deliveries.list") from None


async def list_deliveries(runtime: Runtime, caller: Caller, params: DeliveriesListParams) -> dict[str, Any]:
    """``deliveries.list``: ``{"items": [...], "next_cursor"}`` (null on the last page)."""
    before = _parse_cursor(params.before) if params.before else None
    rows = await list_jobs(
        runtime.pool, user_id=params.user_id, status=params.status, before=before, limit=params.limit + 1
    )
    page = rows[: params.limit]
    return {
        "items": [{name: row[name] for name in _FIELDS} for row in page],
        "next_cursor": _cursor(page[-1]) if len(rows) > params.limit else None,
    }


METHODS: Final = {"deliveries.list": Method(DeliveriesListParams, list_deliveries, admin_only=True)}
