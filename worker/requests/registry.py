"""Every request method by name: the union of the areas' ``METHODS`` tables (one line per area)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from worker.requests import admin, deliveries, inbox, notifications, preferences, profile, push, session

if TYPE_CHECKING:
    from worker.requests.common import Method

METHODS: Final[dict[str, Method]] = {
    **session.METHODS,
    **notifications.METHODS,
    **inbox.METHODS,
    **preferences.METHODS,
    **admin.METHODS,
    **profile.METHODS,
    **push.METHODS,
    **deliveries.METHODS,
}
