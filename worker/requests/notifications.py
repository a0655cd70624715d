"""``notifications.*``: pages, sync, the counters, read/unread/delete (docs/protocol.md §5).

The inbox states of §10 (seen, archive, act) are in :mod:`worker.requests.inbox`. Every result and event
of a change carries both visible counts, ``unread_count`` and ``unseen_count``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import Field, StringConstraints

from worker.requests.common import Method, NoParams, Params, bad_param, publish_event
from worker.store import inbox, mutations

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg

    from worker.requests.common import Caller
    from worker.runtime import Runtime

MAX_IDS: Final = 500
MAX_PAGE: Final = 100
MAX_SYNC: Final = 500
# Offset pages cost a scan of the skipped rows; 1,000 pages of 100 is far past what a person pages through.
MAX_PAGE_NUMBER: Final = 1000
# seq is a bigint: a larger cursor is invalid params, not a driver error (-32603) on the query.
MAX_SEQ: Final = 2**63 - 1

# Postgres text cannot hold NUL (the query would fail): such an id is invalid params, not an internal error.
NotificationId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ListParams(Params):
    """``notifications.list``: a page before ``before`` (a seq), newest first, optionally filtered.

    ``page`` (from 1) is the alternative for page-number clients (the HTTP API's ``?page=``): it skips
    ``(page - 1) * limit`` rows instead of following the cursor; the two cannot be combined.
    """

    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    before: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    page: int | None = Field(default=None, ge=1, le=MAX_PAGE_NUMBER)
    unread_only: bool = False
    # False: the inbox without archived items; True: the Archived tab; None: both.
    archived: bool | None = False
    types: list[Name] | None = Field(default=None, max_length=64)
    categories: list[Name] | None = Field(default=None, max_length=64)


class SyncParams(Params):
    """``notifications.sync``: what came after ``since``, oldest first."""

    since: int = Field(default=0, ge=0, le=MAX_SEQ)
    limit: int = Field(default=MAX_SYNC, ge=1, le=MAX_SYNC)


class IdsParams(Params):
    """``mark_read`` / ``mark_unread`` / ``delete`` / ``archive`` / ``unarchive``: up to 500 ids."""

    ids: list[NotificationId] = Field(max_length=MAX_IDS)


def _check_names(field: str, names: list[str] | None, known: set[str] | tuple[str, ...], what: str) -> None:
    for index, name in enumerate(names or ()):
        if name not in known:
            raise bad_param(f"{field}.{index}", f"unknown {what}")


async def list_notifications(runtime: Runtime, caller: Caller, params: ListParams) -> dict[str, Any]:
    """``notifications.list``: ``{items (newest first), next_cursor, total, unread_count, unseen_count,
    last_seq}``."""
    _check_names("types", params.types, set(runtime.catalog.types), "notification type")
    _check_names("categories", params.categories, runtime.catalog.categories, "category")
    if params.page is not None and params.before is not None:
        raise bad_param("page", "cannot be combined with before")
    page = await inbox.list_page(runtime.pool, params, caller.user_id)
    has_more = len(page.items) > params.limit
    items = page.items[: params.limit]
    return {
        "items": items,
        "next_cursor": items[-1]["seq"] if has_more else None,
        "total": page.total,
        "unread_count": page.unread_count,
        "unseen_count": page.unseen_count,
        "last_seq": page.last_seq,
    }


async def sync_notifications(runtime: Runtime, caller: Caller, params: SyncParams) -> dict[str, Any]:
    """``notifications.sync``: ``{items (seq ascending, all > since), has_more}``."""
    items = await inbox.sync(runtime.pool, caller.user_id, params.since, params.limit + 1)
    return {"items": items[: params.limit], "has_more": len(items) > params.limit}


async def unread_count(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``notifications.unread_count``: ``{count, unseen_count, last_seq}`` from the maintained counters
    (``last_seq`` anchors the watermark of a client whose ``connected`` had none: amendment 42)."""
    counted = await inbox.counts(runtime.pool, caller.user_id)
    return {"count": counted.unread, "unseen_count": counted.unseen, "last_seq": counted.last_seq}


async def change_ids(
    runtime: Runtime,
    caller: Caller,
    change: Callable[[asyncpg.Pool, str, list[str]], Awaitable[mutations.Change]],
    ids: list[str],
    event: str,
    counted: str = "updated",
) -> dict[str, Any]:
    """Run ``change`` over ``ids``; publish ``event`` ``{ids, unread_count, unseen_count}`` if any row
    changed. The result: ``{<counted>: rows changed, unread_count, unseen_count}``."""
    result = await change(runtime.pool, caller.user_id, list(dict.fromkeys(ids)))
    if result.changed:
        await publish_event(runtime, caller.user_id, event, {"ids": result.ids, **result.counts()})
    return {counted: result.changed, **result.counts()}


async def change_all(
    runtime: Runtime,
    caller: Caller,
    change: Callable[[asyncpg.Pool, str], Awaitable[mutations.Change]],
    event: str,
) -> dict[str, Any]:
    """Run ``change`` over all the user's notifications; publish ``event`` ``{all: true, counts}``."""
    result = await change(runtime.pool, caller.user_id)
    if result.changed:
        await publish_event(runtime, caller.user_id, event, {"all": True, **result.counts()})
    return {"updated": result.changed, **result.counts()}


async def mark_read(runtime: Runtime, caller: Caller, params: IdsParams) -> dict[str, Any]:
    """``notifications.mark_read``: ``{updated, counts}``; publishes ``notification:read`` (read is seen)."""
    return await change_ids(runtime, caller, mutations.mark_read, params.ids, "notification:read")


async def mark_unread(runtime: Runtime, caller: Caller, params: IdsParams) -> dict[str, Any]:
    """``notifications.mark_unread``: ``{updated, counts}``; publishes ``notification:unread``."""
    return await change_ids(runtime, caller, mutations.mark_unread, params.ids, "notification:unread")


async def delete(runtime: Runtime, caller: Caller, params: IdsParams) -> dict[str, Any]:
    """``notifications.delete``: ``{deleted, counts}``; publishes ``notification:deleted``."""
    return await change_ids(runtime, caller, mutations.delete, params.ids, "notification:deleted", "deleted")


async def mark_all_read(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``notifications.mark_all_read``: ``{updated, unread_count}``; publishes ``{all: true, ...}``.

    ``unread_count`` is 0 unless a notification was stored while the statement ran (it stays unread).
    """
    return await change_all(runtime, caller, mutations.mark_all_read, "notification:read")


METHODS: Final = {
    "notifications.list": Method(ListParams, list_notifications),
    "notifications.sync": Method(SyncParams, sync_notifications),
    "notifications.unread_count": Method(NoParams, unread_count),
    "notifications.mark_read": Method(IdsParams, mark_read),
    "notifications.mark_unread": Method(IdsParams, mark_unread),
    "notifications.mark_all_read": Method(NoParams, mark_all_read),
    "notifications.delete": Method(IdsParams, delete),
}
