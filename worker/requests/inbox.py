"""Inbox states beyond read (docs/protocol.md §10): ``mark_seen``, ``archive`` / ``unarchive``, ``act``.

``notifications.act`` records the user's choice, marks the item read, tells every connection of the user
(``notification:acted``) and publishes the outcome to ``herald.outcomes`` (routing key = the type), so the
producing service learns the answer. The first choice is final; acting again with the same action
publishes the outcome again (for a client whose first call failed before the outcome was confirmed) and
changes nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import Field, StringConstraints, model_validator

from shared.events import ACTION_ID_PATTERN
from shared.jsonrpc import ErrorCode, JsonRpcError, dumps
from worker.requests.common import Method, Params, bad_param, publish_event
from worker.requests.notifications import MAX_IDS, IdsParams, NotificationId, change_all, change_ids
from worker.store import inbox, mutations

if TYPE_CHECKING:
    from worker.requests.common import Caller
    from worker.runtime import Runtime

ACTED_METHOD: Final = "notification:acted"


class SeenParams(Params):
    """``notifications.mark_seen``: up to 500 ``ids``, or ``all: true``."""

    ids: list[NotificationId] | None = Field(default=None, max_length=MAX_IDS)
    all: bool = False

    @model_validator(mode="after")
    def _ids_or_all(self) -> SeenParams:
        if (self.ids is None) == (not self.all):
            raise ValueError("give either ids or all: true")
        return self


class ActParams(Params):
    """``notifications.act``: which notification, and the id of the action the user chose."""

    id: NotificationId
    action_id: Annotated[str, StringConstraints(pattern=ACTION_ID_PATTERN)]


async def mark_seen(runtime: Runtime, caller: Caller, params: SeenParams) -> dict[str, Any]:
    """``notifications.mark_seen``: ``{updated, unread_count, unseen_count}``; publishes
    ``notification:seen`` with the ids, or ``all: true``."""
    if params.ids is None:
        return await change_all(runtime, caller, mutations.mark_all_seen, "notification:seen")
    return await change_ids(runtime, caller, mutations.mark_seen, params.ids, "notification:seen")


async def archive(runtime: Runtime, caller: Caller, params: IdsParams) -> dict[str, Any]:
    """``notifications.archive``: ``{updated, counts}``; publishes ``notification:archived``."""
    return await change_ids(runtime, caller, mutations.archive, params.ids, "notification:archived")


async def unarchive(runtime: Runtime, caller: Caller, params: IdsParams) -> dict[str, Any]:
    """``notifications.unarchive``: ``{updated, counts}``; publishes ``notification:unarchived``."""
    return await change_ids(runtime, caller, mutations.unarchive, params.ids, "notification:unarchived")


async def act(runtime: Runtime, caller: Caller, params: ActParams) -> dict[str, Any]:
    """``notifications.act``: ``{acted, action_id, acted_at, unread_count, unseen_count}``.

    ``acted`` is true when this call recorded the choice. An id that is not the user's (or expired) acts
    on nothing (``acted`` false, ``action_id`` null), like every id method; an action the notification
    does not offer, or another action than the one already recorded, is -32602 naming ``action_id``.

    Raises:
        JsonRpcError: 5003 when the outcome could not be published; the choice is recorded, and calling
            again with the same action publishes it again.
    """
    user = caller.user_id
    change = await mutations.act(runtime.pool, user, params.id, params.action_id)
    recorded = await mutations.acted(runtime.pool, user, params.id)
    if recorded is None:
        counted = await inbox.counts(runtime.pool, user)
        return {
            "acted": False,
            "action_id": None,
            "acted_at": None,
            "unread_count": counted.unread,
            "unseen_count": counted.unseen,
            "last_seq": counted.last_seq,
        }
    if params.action_id not in recorded.action_ids:
        raise bad_param("action_id", "not an action of this notification")
    if recorded.action_id != params.action_id:
        raise bad_param("action_id", f"already acted with {recorded.action_id!r}")
    if change.changed:
        await publish_event(
            runtime,
            user,
            ACTED_METHOD,
            {
                "id": recorded.id,
                "action_id": recorded.action_id,
                "acted_at": recorded.acted_at,
                **change.counts(),
            },
        )
    else:
        counted = await inbox.counts(runtime.pool, user)
        change = mutations.Change(0, [], counted.unread, counted.unseen, counted.last_seq)
    outcome = {
        "notification_id": recorded.id,
        "user_id": user,
        "type": recorded.type,
        "action_id": recorded.action_id,
        "acted_at": recorded.acted_at,
        "data": recorded.data,
    }
    try:
        # message_id: one per (notification, user), so a consumer drops the repeat of a retried call.
        await runtime.publisher.outcome(recorded.type, dumps(outcome), f"{recorded.id}:{user}")
    except Exception as exc:
        raise JsonRpcError(
            ErrorCode.UNAVAILABLE,
            "unavailable: the choice is recorded but its outcome was not published; retry",
        ) from exc
    return {
        "acted": bool(change.changed),
        "action_id": recorded.action_id,
        "acted_at": recorded.acted_at,
        **change.counts(),
    }


METHODS: Final = {
    "notifications.mark_seen": Method(SeenParams, mark_seen),
    "notifications.archive": Method(IdsParams, archive),
    "notifications.unarchive": Method(IdsParams, unarchive),
    "notifications.act": Method(ActParams, act),
}
