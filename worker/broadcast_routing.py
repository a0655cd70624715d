"""A broadcast's email and push jobs, sans-I/O: which known users the rule of a send lets it reach.

The worker stores a broadcast chunk by chunk (``worker.broadcasts``): each chunk's statement stores the
in-app copies and returns the chunk's known users, routed here, whose jobs go into ``delivery_jobs`` in the
chunk's transaction (``worker.store.deliveries``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from shared.jsonrpc import dumps
from shared.preferences import DELIVERY_CHANNELS, decide_channels, default_preferences, effective_preferences
from worker.routing import held_until, notification_params

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from shared.preferences import Catalog
    from worker.routing import BroadcastRouting


@dataclass(frozen=True, slots=True)
class BroadcastJobs:
    """The email/push jobs of one broadcast: its Notification object and ``(user, channel, held until)``."""

    notification: dict[str, Any]
    jobs: list[tuple[str, str, datetime | None]]


def broadcast_jobs(
    routing: BroadcastRouting,
    audience: Mapping[str, Mapping[str, Any] | None],
    catalog: Catalog,
    now: datetime,
) -> BroadcastJobs:
    """Who of ``audience`` (known users → stored overrides) gets a broadcast by email or push.

    The same rule as a send's: :func:`shared.preferences.decide_channels` with the event's ``channels``,
    held until the end of the user's quiet hours.
    """
    event = routing.event
    kind = catalog[event.type]
    defaults = default_preferences(catalog)
    jobs: list[tuple[str, str, datetime | None]] = []
    for user, stored in audience.items():
        prefs = effective_preferences(catalog, stored) if stored else defaults
        channels = decide_channels(kind, prefs, event.channels)
        external = [channel for channel in DELIVERY_CHANNELS if channel in channels]
        if external:
            held = held_until(user, prefs["quiet_hours"], now)
            jobs += [(user, channel, held) for channel in external]
    notification = notification_params(routing.notification_id, event, routing.category, now)
    return BroadcastJobs(orjson.loads(dumps(notification)), jobs)
