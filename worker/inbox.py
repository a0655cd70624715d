"""The client methods of PROTOCOL §5 (inbox, preferences, broadcast) and ``session.open``: SQL and events.

Every statement is scoped by the caller's verified user id; ids belonging to someone else match no row, so
they are ignored exactly like ids that do not exist (counts 0, no error, nothing revealed).

``users.unread_count`` is maintained, never counted: each mutation changes ``notifications`` and the
counter in one statement (data-modifying CTEs), and reads take the counter. A mutation first locks the
user's ``users`` row (the ``locked`` CTE, which every changed row joins), so a user's mutations are
serialized and always take locks in the same order as the worker's inserts (users row, then
notifications): concurrent requests of one user cannot deadlock each other.

Every mutation that changed something publishes its event to ``herald.users`` keyed by the user id, after
the statement committed, so every connection of the user, on every gateway, follows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

import asyncpg
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints

from shared.events import TYPE_PATTERN, BroadcastEvent
from shared.jsonrpc import ErrorCode, notification_frame
from shared.preferences import InvalidPreferences, effective_preferences, merge_update
from shared.topology import BROADCAST_ROUTING_KEY
from worker.db import NOTIFICATION_COLUMNS, notification_json
from worker.publish import publish_user_frame

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import ValidationError

    from worker.state import WorkerState

log = structlog.get_logger(__name__)

MAX_IDS: Final = 500
MAX_PAGE: Final = 100
MAX_SYNC: Final = 500
# seq is a bigint: a larger cursor is invalid params, not a driver error (-32603) on the query.
MAX_SEQ: Final = 2**63 - 1
DEFAULT_TYPE: Final = "SYSTEM_ANNOUNCEMENT"
# This module's statements and the worker's inserts and retention lock users rows first, so they cannot
# deadlock one another; another writer locking in a different order (an operator's script) might, and
# that must not reach the client as an error.
DEADLOCK_RETRIES: Final = 3


# --------------------------------------------------------------------------------------------- errors


class RequestError(Exception):
    """A request refused with a JSON-RPC error ``code``; ``data`` is sent along when not ``None``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.data = data


def bad_param(field: str, reason: str) -> RequestError:
    """-32602 whose ``data`` is ``field`` (a dotted path into params), as the gateway's own -32602 errors."""
    return RequestError(ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {reason}", field)


def invalid_params(error: ValidationError) -> RequestError:
    """-32602 naming the first field pydantic refused (``params`` when the params are not an object)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "params"
    return bad_param(field, first["msg"])


# --------------------------------------------------------------------------------------------- params


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: the user id the gateway verified, and whether the token carried the admin role."""

    user_id: str
    admin: bool = False


class Params(BaseModel):
    """Strict params: no coercion (``"20"`` is not a limit) and no unknown members."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Postgres text cannot hold NUL (the query would fail): such an id is invalid params, not an internal error.
NotificationId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class NoParams(Params):
    """A method without params (``{}``)."""


class ListParams(Params):
    """``notifications.list``: a page before ``before`` (a seq), newest first, optionally filtered."""

    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    before: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    unread_only: bool = False
    types: list[Name] | None = Field(default=None, max_length=64)
    categories: list[Name] | None = Field(default=None, max_length=64)


class SyncParams(Params):
    """``notifications.sync``: what came after ``since``, oldest first."""

    since: int = Field(default=0, ge=0, le=MAX_SEQ)
    limit: int = Field(default=MAX_SYNC, ge=1, le=MAX_SYNC)


class IdsParams(Params):
    """``mark_read`` / ``mark_unread`` / ``delete``: up to 500 notification ids."""

    ids: list[NotificationId] = Field(max_length=MAX_IDS)


class PreferencesUpdateParams(RootModel[dict[str, Any]]):
    """``preferences.update``: a partial Preferences document, checked by ``merge_update``."""


class BroadcastParams(BroadcastEvent):
    """``notifications.broadcast``: a broadcast event's body; ``type`` defaults to the announcement."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Annotated[str, StringConstraints(pattern=TYPE_PATTERN)] = DEFAULT_TYPE


# ------------------------------------------------------------------------------------------- queries

_OPEN_SESSION = """
WITH created AS (
    INSERT INTO users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING
    RETURNING last_seq, unread_count
)
SELECT u.last_seq, u.unread_count, p.channels, p.types, p.quiet_hours, p.updated_at
  FROM (SELECT last_seq, unread_count FROM created
        UNION ALL
        SELECT last_seq, unread_count FROM users WHERE user_id = $1) AS u
  LEFT JOIN user_preferences AS p ON p.user_id = $1
"""

UNREAD_COUNT = "SELECT unread_count FROM users WHERE user_id = $1"

_SYNC = f"""
SELECT {NOTIFICATION_COLUMNS} FROM notifications
 WHERE user_id = $1 AND seq > $2
 ORDER BY seq
 LIMIT $3
"""

_PREFERENCES = "SELECT channels, types, quiet_hours, updated_at FROM user_preferences WHERE user_id = $1"

_ENSURE_USER = "INSERT INTO users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING"

# Locks the users row: preference writers of one user are serialized even before their first row exists.
_PREFERENCES_FOR_UPDATE = """
SELECT p.channels, p.types, p.quiet_hours, p.updated_at
  FROM users AS u LEFT JOIN user_preferences AS p ON p.user_id = u.user_id
 WHERE u.user_id = $1
   FOR UPDATE OF u
"""

_STORE_PREFERENCES = """
INSERT INTO user_preferences (user_id, channels, types, quiet_hours, updated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (user_id) DO UPDATE
   SET channels = EXCLUDED.channels, types = EXCLUDED.types,
       quiet_hours = EXCLUDED.quiet_hours, updated_at = EXCLUDED.updated_at
RETURNING updated_at
"""

_RESET_PREFERENCES = "DELETE FROM user_preferences WHERE user_id = $1 RETURNING user_id"


def _mutation(changed: str, *, with_ids: bool = True) -> str:
    """One statement: lock the users row, change notifications (``changed``), adjust the counter.

    ``changed`` is a data-modifying statement over ``notifications AS n`` joined with ``locked`` and
    returning ``n.id``, ``n.seq`` and ``unread_delta`` (how the row changed the unread count); ``$1`` is
    the user id. Joining ``locked`` means no notification row is locked before the users row. The result
    is one row: how many rows changed, their ids in seq order (empty unless ``with_ids``) and the counter
    after the change.
    """
    ids = "ARRAY(SELECT id FROM changed ORDER BY seq)" if with_ids else "'{}'::text[]"
    return f"""
WITH locked AS (
    SELECT user_id, unread_count FROM users WHERE user_id = $1 FOR UPDATE
), changed AS (
    {changed}
), counter AS (
    UPDATE users SET unread_count = unread_count + (SELECT sum(unread_delta) FROM changed)
     WHERE user_id = $1 AND EXISTS (SELECT FROM changed)
 RETURNING unread_count
)
SELECT (SELECT count(*) FROM changed) AS changed, {ids} AS ids,
       COALESCE((SELECT unread_count FROM counter), (SELECT unread_count FROM locked), 0) AS unread_count
"""


_MARK_READ = _mutation(
    """UPDATE notifications AS n SET read_at = now() FROM locked
     WHERE n.user_id = locked.user_id AND n.id = ANY($2::text[]) AND n.read_at IS NULL
 RETURNING n.id, n.seq, -1 AS unread_delta"""
)
_MARK_UNREAD = _mutation(
    """UPDATE notifications AS n SET read_at = NULL FROM locked
     WHERE n.user_id = locked.user_id AND n.id = ANY($2::text[]) AND n.read_at IS NOT NULL
 RETURNING n.id, n.seq, 1 AS unread_delta"""
)
# The event says "all", so the (possibly 100,000) ids are not collected.
_MARK_ALL_READ = _mutation(
    """UPDATE notifications AS n SET read_at = now() FROM locked
     WHERE n.user_id = locked.user_id AND n.read_at IS NULL
 RETURNING n.id, n.seq, -1 AS unread_delta""",
    with_ids=False,
)
_DELETE = _mutation(
    """DELETE FROM notifications AS n USING locked
     WHERE n.user_id = locked.user_id AND n.id = ANY($2::text[])
 RETURNING n.id, n.seq, CASE WHEN n.read_at IS NULL THEN -1 ELSE 0 END AS unread_delta"""
)


def list_query(params: ListParams, user_id: str) -> tuple[str, list[Any]]:
    """The page and its ``total`` and ``unread_count`` in one statement, with only the filters in use.

    Filters are spelled into the text rather than written ``($n IS NULL OR ...)``, so every combination
    gets its own plan: unread-only pages use the partial index, the cursor is an index bound on the
    primary key (user_id, seq).
    """
    args: list[Any] = [user_id]
    conditions = ["user_id = $1"]
    if params.unread_only:
        conditions.append("read_at IS NULL")
    if params.types is not None:
        args.append(params.types)
        conditions.append(f"type = ANY(${len(args)}::text[])")
    if params.categories is not None:
        args.append(params.categories)
        conditions.append(f"category = ANY(${len(args)}::text[])")
    filters = " AND ".join(conditions)
    unread = "COALESCE((SELECT unread_count FROM users WHERE user_id = $1), 0)"
    # The maintained counter answers "how many unread" without counting; other totals count rows.
    total = (
        unread
        if len(conditions) == 2 and params.unread_only
        else (f"(SELECT count(*) FROM notifications WHERE {filters})")
    )
    page = filters
    if params.before is not None:
        args.append(params.before)
        page += f" AND seq < ${len(args)}"
    args.append(params.limit + 1)  # one more than asked tells whether another page exists
    sql = f"""
SELECT s.total, s.unread_count, p.*
  FROM (SELECT {total} AS total, {unread} AS unread_count) AS s
  LEFT JOIN LATERAL (
        SELECT {NOTIFICATION_COLUMNS} FROM notifications
         WHERE {page}
         ORDER BY seq DESC
         LIMIT ${len(args)}) AS p ON true
 ORDER BY p.seq DESC
"""
    return sql, args


# ------------------------------------------------------------------------------------------- helpers


def _overrides(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None or row["updated_at"] is None:
        return None
    return {"channels": row["channels"], "types": row["types"], "quiet_hours": row["quiet_hours"]}


def _check_names(field: str, names: list[str] | None, known: set[str] | tuple[str, ...], what: str) -> None:
    for index, name in enumerate(names or ()):
        if name not in known:
            raise bad_param(f"{field}.{index}", f"unknown {what}")


async def _publish(user_id: str, method: str, params: Any) -> None:
    """Publish one event to the user's connections; a failure is logged, never turned into an error.

    The change is committed by then: answering with an error would make the client retry a request that
    already happened. A connection that missed the frame catches up on its next sync or list.
    """
    try:
        await publish_user_frame(user_id, method, notification_frame(method, params))
    except Exception:
        log.warning("event_publish_failed", method=method, user_id=user_id, exc_info=True)


@dataclass(frozen=True, slots=True)
class Change:
    """What a mutation did: rows changed, their ids (when collected), the unread counter after it."""

    changed: int
    ids: list[str]
    unread_count: int


async def _mutate(state: WorkerState, sql: str, *args: Any) -> Change:
    """Run one ``_mutation`` statement (autocommit), retrying a deadlock a few times."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            row = await state.pool.fetchrow(sql, *args)
            break
        except asyncpg.DeadlockDetectedError:
            if attempt == DEADLOCK_RETRIES - 1:
                raise
    assert row is not None
    return Change(row["changed"], list(row["ids"]), row["unread_count"])


# ------------------------------------------------------------------------------------------- methods


async def open_session(state: WorkerState, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``session.open`` (gateway only): make the user known; their counters and effective preferences."""
    row = await state.pool.fetchrow(_OPEN_SESSION, caller.user_id)
    if row is None:
        # Another connection inserted the row after this statement's snapshot: read it again.
        row = await state.pool.fetchrow(_OPEN_SESSION, caller.user_id)
    assert row is not None
    return {
        "unread_count": row["unread_count"],
        "last_seq": row["last_seq"],
        "preferences": effective_preferences(state.catalog, _overrides(row), row["updated_at"]),
    }


async def list_notifications(state: WorkerState, caller: Caller, params: ListParams) -> dict[str, Any]:
    """``notifications.list``: ``{items (newest first), next_cursor, total, unread_count}``."""
    _check_names("types", params.types, set(state.catalog.types), "notification type")
    _check_names("categories", params.categories, state.catalog.categories, "category")
    sql, args = list_query(params, caller.user_id)
    rows = await state.pool.fetch(sql, *args)
    items = [notification_json(row) for row in rows if row["seq"] is not None]
    has_more = len(items) > params.limit
    items = items[: params.limit]
    return {
        "items": items,
        "next_cursor": items[-1]["seq"] if has_more else None,
        "total": rows[0]["total"],
        "unread_count": rows[0]["unread_count"],
    }


async def sync_notifications(state: WorkerState, caller: Caller, params: SyncParams) -> dict[str, Any]:
    """``notifications.sync``: ``{items (seq ascending, all > since), has_more}``."""
    rows = await state.pool.fetch(_SYNC, caller.user_id, params.since, params.limit + 1)
    return {
        "items": [notification_json(row) for row in rows[: params.limit]],
        "has_more": len(rows) > params.limit,
    }


async def unread_count(state: WorkerState, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``notifications.unread_count``: ``{count}`` from the maintained counter."""
    count = await state.pool.fetchval(UNREAD_COUNT, caller.user_id)
    return {"count": count or 0}


async def _change_ids(
    state: WorkerState, caller: Caller, sql: str, ids: list[str], event: str, counted: str
) -> dict[str, Any]:
    """Run a mutation over ``ids``; publish ``event`` ``{ids, unread_count}`` if any row changed."""
    change = await _mutate(state, sql, caller.user_id, list(dict.fromkeys(ids)))
    if change.changed:
        await _publish(caller.user_id, event, {"ids": change.ids, "unread_count": change.unread_count})
    return {counted: change.changed, "unread_count": change.unread_count}


async def mark_read(state: WorkerState, caller: Caller, params: IdsParams) -> dict[str, Any]:
    """``notifications.mark_read``: ``{updated, unread_count}``; publishes ``notification:read``."""
    return await _change_ids(state, caller, _MARK_READ, params.ids, "notification:read", "updated")


async def mark_unread(state: WorkerState, caller: Caller, params: IdsParams) -> dict[str, Any]:
    """``notifications.mark_unread``: ``{updated, unread_count}``; publishes ``notification:unread``."""
    return await _change_ids(state, caller, _MARK_UNREAD, params.ids, "notification:unread", "updated")


async def delete(state: WorkerState, caller: Caller, params: IdsParams) -> dict[str, Any]:
    """``notifications.delete``: ``{deleted, unread_count}``; publishes ``notification:deleted``."""
    return await _change_ids(state, caller, _DELETE, params.ids, "notification:deleted", "deleted")


async def mark_all_read(state: WorkerState, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``notifications.mark_all_read``: ``{updated, unread_count}``; publishes ``{all: true, ...}``.

    ``unread_count`` is 0 unless a notification was stored while the statement ran (it stays unread).
    """
    change = await _mutate(state, _MARK_ALL_READ, caller.user_id)
    if change.changed:
        await _publish(
            caller.user_id, "notification:read", {"all": True, "unread_count": change.unread_count}
        )
    return {"updated": change.changed, "unread_count": change.unread_count}


async def get_preferences(state: WorkerState, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``preferences.get``: the effective document (catalog defaults merged with the user's overrides)."""
    row = await state.pool.fetchrow(_PREFERENCES, caller.user_id)
    return effective_preferences(state.catalog, _overrides(row), row["updated_at"] if row else None)


async def update_preferences(
    state: WorkerState, caller: Caller, params: PreferencesUpdateParams
) -> dict[str, Any]:
    """``preferences.update``: deep-merge a partial document; publishes ``preferences:updated``.

    ``updated_at`` in the update is ignored (clients may send back the document they got). Nothing is
    written or published when the effective document stays the same.
    """
    update = {key: value for key, value in params.root.items() if key != "updated_at"}
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(_ENSURE_USER, caller.user_id)
        row = await conn.fetchrow(_PREFERENCES_FOR_UPDATE, caller.user_id)
        stored = _overrides(row)
        try:
            merged = merge_update(state.catalog, stored, update)
        except InvalidPreferences as exc:
            raise bad_param(exc.field, exc.message) from None
        updated_at = row["updated_at"] if row else None
        # Compared as effective documents: re-sending what get returned stores and publishes nothing.
        unchanged = effective_preferences(state.catalog, merged, updated_at) == effective_preferences(
            state.catalog, stored, updated_at
        )
        if not unchanged:
            updated_at = await conn.fetchval(
                _STORE_PREFERENCES,
                caller.user_id,
                merged["channels"],
                merged["types"],
                merged["quiet_hours"],
            )
    document = effective_preferences(state.catalog, merged, updated_at)
    if not unchanged:
        await _publish(caller.user_id, "preferences:updated", document)
    return document


async def reset_preferences(state: WorkerState, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``preferences.reset``: drop the user's overrides; publishes ``preferences:updated`` if any existed."""
    removed = await state.pool.fetchval(_RESET_PREFERENCES, caller.user_id)
    document = effective_preferences(state.catalog, None)
    if removed is not None:
        await _publish(caller.user_id, "preferences:updated", document)
    return document


async def broadcast(state: WorkerState, caller: Caller, params: BroadcastParams) -> dict[str, Any]:
    """``notifications.broadcast`` (admin): publish a broadcast event to ``herald.events``.

    The worker that consumes it stores it for every known user whose preferences allow the type and
    publishes the live frame; the reply only says the event was accepted by the broker (confirmed).
    """
    if params.type not in state.catalog:
        raise bad_param("type", "unknown notification type")
    event_id = params.event_id or f"broadcast-{uuid.uuid4().hex}"
    body = orjson.dumps({**params.model_dump(mode="json", exclude_none=True), "event_id": event_id})
    await state.broker.publish(
        body,
        exchange=state.topology.events_exchange,
        routing_key=BROADCAST_ROUTING_KEY,
        persist=True,
        content_type="application/json",
        message_id=event_id,
    )
    return {"accepted": True, "event_id": event_id}


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class Method:
    """A request method: its params model, its coroutine, and whether only admins may call it."""

    params: type[BaseModel]
    run: Callable[[WorkerState, Caller, Any], Awaitable[Any]]
    admin_only: bool = False


METHODS: Final[dict[str, Method]] = {
    "session.open": Method(NoParams, open_session),
    "notifications.list": Method(ListParams, list_notifications),
    "notifications.sync": Method(SyncParams, sync_notifications),
    "notifications.unread_count": Method(NoParams, unread_count),
    "notifications.mark_read": Method(IdsParams, mark_read),
    "notifications.mark_unread": Method(IdsParams, mark_unread),
    "notifications.mark_all_read": Method(NoParams, mark_all_read),
    "notifications.delete": Method(IdsParams, delete),
    "preferences.get": Method(NoParams, get_preferences),
    "preferences.update": Method(PreferencesUpdateParams, update_preferences),
    "preferences.reset": Method(NoParams, reset_preferences),
    "notifications.broadcast": Method(BroadcastParams, broadcast, admin_only=True),
}
