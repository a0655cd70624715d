"""``preferences.*``: the effective document, partial updates, reset (docs/protocol.md §6)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from pydantic import RootModel

from shared.preference_flags import expand_flags
from shared.preferences import InvalidPreferences, effective_preferences, merge_update
from worker.requests.common import Method, NoParams, bad_param, publish_event
from worker.store import preferences as store

if TYPE_CHECKING:
    from worker.requests.common import Caller
    from worker.runtime import Runtime

UPDATED_METHOD: Final = "preferences:updated"


class PreferencesUpdateParams(RootModel[dict[str, Any]]):
    """``preferences.update``: a partial Preferences document and/or the seed's camelCase flags
    (``{"newCourseContent": false}``, see :mod:`shared.preference_flags`), checked by ``merge_update``."""


async def get_preferences(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``preferences.get``: the effective document (catalog defaults merged with the user's overrides)."""
    stored = await store.get_preferences(runtime.pool, caller.user_id)
    return effective_preferences(runtime.catalog, stored.overrides, stored.updated_at)


async def update_preferences(
    runtime: Runtime, caller: Caller, params: PreferencesUpdateParams
) -> dict[str, Any]:
    """``preferences.update``: deep-merge a partial document; publishes ``preferences:updated``.

    ``updated_at`` in the update is ignored (clients may send back the document they got). Nothing is
    written or published when the effective document stays the same.
    """
    catalog = runtime.catalog
    try:
        update = expand_flags(catalog, params.root)
    except InvalidPreferences as exc:
        raise bad_param(exc.field, exc.message) from None
    update.pop("updated_at", None)
    async with store.edit_preferences(runtime.pool, caller.user_id) as stored:
        try:
            merged = merge_update(catalog, stored.overrides, update)
        except InvalidPreferences as exc:
            raise bad_param(exc.field, exc.message) from None
        updated_at = stored.updated_at
        # Compared as effective documents: re-sending what get returned stores and publishes nothing.
        unchanged = effective_preferences(catalog, merged, updated_at) == effective_preferences(
            catalog, stored.overrides, updated_at
        )
        if not unchanged:
            updated_at = await stored.save(merged)
    document = effective_preferences(catalog, merged, updated_at)
    if not unchanged:
        await publish_event(runtime, caller.user_id, UPDATED_METHOD, document)
    return document


async def reset_preferences(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``preferences.reset``: drop the user's overrides; publishes ``preferences:updated`` if any existed."""
    removed = await store.reset_preferences(runtime.pool, caller.user_id)
    document = effective_preferences(runtime.catalog, None)
    if removed:
        await publish_event(runtime, caller.user_id, UPDATED_METHOD, document)
    return document


METHODS: Final = {
    "preferences.get": Method(NoParams, get_preferences),
    "preferences.update": Method(PreferencesUpdateParams, update_preferences),
    "preferences.reset": Method(NoParams, reset_preferences),
}
