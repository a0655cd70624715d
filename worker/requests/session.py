"""``session.open`` and ``session.open_many``: what a gateway asks for when connections open
(docs/protocol.md §5 and amendment 39)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from pydantic import Field

from shared.events import UserId
from shared.jsonrpc import SESSIONS_PER_REQUEST
from shared.preferences import effective_preferences
from worker.requests.common import Method, NoParams, Params

if TYPE_CHECKING:
    from worker.requests.common import Caller
    from worker.runtime import Runtime


class OpenManyParams(Params):
    """The users whose connections a gateway is opening, at most :data:`SESSIONS_PER_REQUEST`."""

    user_ids: list[UserId] = Field(min_length=1, max_length=SESSIONS_PER_REQUEST)


async def _opened(runtime: Runtime, user_id: str) -> dict[str, Any]:
    # Concurrent connects share one statement (shared.coalesce).
    session = await runtime.sessions.get(user_id)
    stored = session.preferences
    return {
        "unread_count": session.unread_count,
        "unseen_count": session.unseen_count,
        "last_seq": session.last_seq,
        "preferences": effective_preferences(runtime.catalog, stored.overrides, stored.updated_at),
    }


async def open_session(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``session.open`` (gateway only): make the user known; their counters and effective preferences."""
    return await _opened(runtime, caller.user_id)


async def open_sessions(runtime: Runtime, caller: Caller, params: OpenManyParams) -> dict[str, Any]:
    """``session.open_many`` (gateway only): ``session.open`` for each of ``user_ids`` in one request,
    ``{"sessions": {user_id: <what session.open returns>}}``. The envelope's caller is not used."""
    users = list(dict.fromkeys(params.user_ids))
    opened = await asyncio.gather(*(_opened(runtime, user_id) for user_id in users))
    return {"sessions": dict(zip(users, opened, strict=True))}


METHODS: Final = {
    "session.open": Method(NoParams, open_session),
    "session.open_many": Method(OpenManyParams, open_sessions),
}
