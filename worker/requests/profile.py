"""``profile.get``: the caller's contact data, as ``user.profile`` events left it (docs/protocol.md §9)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from worker.requests.common import Method, NoParams
from worker.store.profiles import get_profile

if TYPE_CHECKING:
    from worker.requests.common import Caller
    from worker.runtime import Runtime


async def profile_get(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``profile.get``: ``{user_id, email, name, locale, timezone, updated_at}``; fields null when unknown."""
    return await get_profile(runtime.pool, caller.user_id)


METHODS: Final = {"profile.get": Method(NoParams, profile_get)}
