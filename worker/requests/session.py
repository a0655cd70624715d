"""``session.open``: what a gateway asks for when a connection opens (docs/protocol.md §5)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from shared.preferences import effective_preferences
from worker.requests.common import Method, NoParams

if TYPE_CHECKING:
    from worker.requests.common import Caller
    from worker.runtime import Runtime


async def open_session(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``session.open`` (gateway only): make the user known; their counters and effective preferences."""
    # Concurrent connects share one statement (worker.coalesce).
    session = await runtime.sessions.get(caller.user_id)
    stored = session.preferences
    return {
        "unread_count": session.unread_count,
        "unseen_count": session.unseen_count,
        "last_seq": session.last_seq,
        "preferences": effective_preferences(runtime.catalog, stored.overrides, stored.updated_at),
    }


METHODS: Final = {"session.open": Method(NoParams, open_session)}
