"""Notification catalog and preferences (PROTOCOL §6): pure functions, no I/O.

The catalog is data in Postgres (``notification_types``); callers load it into :class:`Catalog` and pass it
here. A user's stored overrides are a partial :class:`Preferences`-shaped dict; the *effective* document is
the catalog defaults deep-merged with those overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.events import CHANNELS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_HHMM: Final = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
#: Channels sent by delivery jobs rather than in-app; quiet hours hold back exactly these, never in-app.
DELIVERY_CHANNELS: Final = ("email", "push")
#: Channels a user may not turn off for a critical type.
CRITICAL_LOCKED_CHANNELS: Final = frozenset({"in_app", "email"})


def channel_enabled(channel: str, *, master: bool, type_switch: bool, critical: bool) -> bool:
    """THE preference rule: may a notification of a type use ``channel`` for this user?

    ``master`` is the user's switch for the channel, ``type_switch`` their setting for the type on that
    channel. A critical type's locked channels (:data:`CRITICAL_LOCKED_CHANNELS`) ignore both switches;
    every other channel needs both on. Everything that decides channels derives from this function: the
    worker's routing (:func:`decide_channels`), the gateway's broadcast filter (``gateway/hub.py``) and
    the broadcast SQL, whose agreement with it is proven case by case in
    ``tests/integration/test_preference_rule_sql.py``.
    """
    return (critical and channel in CRITICAL_LOCKED_CHANNELS) or (master and type_switch)


@dataclass(frozen=True, slots=True)
class NotificationType:
    """One catalog row: a type, its category, its default channels and whether it is critical."""

    name: str
    category: str
    defaults: Mapping[str, bool]
    critical: bool = False

    def locked_channels(self) -> frozenset[str]:
        """Channels a user may not turn off: in-app and email for critical types."""
        return CRITICAL_LOCKED_CHANNELS if self.critical else frozenset()


class Catalog:
    """The notification types by name, in catalog order."""

    def __init__(self, types: Iterable[NotificationType]) -> None:
        self.types: dict[str, NotificationType] = {t.name: t for t in types}
        self.categories: tuple[str, ...] = tuple(dict.fromkeys(t.category for t in self.types.values()))

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def __getitem__(self, name: str) -> NotificationType:
        return self.types[name]

    def __len__(self) -> int:
        return len(self.types)


class InvalidPreferences(ValueError):
    """A preferences update is refused; ``field`` is the dotted path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def default_preferences(catalog: Catalog) -> dict[str, Any]:
    """The document a user without overrides has."""
    return {
        "channels": dict.fromkeys(CHANNELS, True),
        "types": {
            t.name: {c: bool(t.defaults.get(c, True)) for c in CHANNELS} for t in catalog.types.values()
        },
        "quiet_hours": None,
        "updated_at": None,
    }


def effective_preferences(
    catalog: Catalog, overrides: Mapping[str, Any] | None, updated_at: datetime | None = None
) -> dict[str, Any]:
    """Catalog defaults deep-merged with ``overrides``; critical channels are always on."""
    document = default_preferences(catalog)
    if overrides:
        document["channels"].update(overrides.get("channels") or {})
        for name, setting in (overrides.get("types") or {}).items():
            if name in document["types"]:
                document["types"][name].update(setting)
        document["quiet_hours"] = overrides.get("quiet_hours")
    for t in catalog.types.values():
        for channel in t.locked_channels():
            document["types"][t.name][channel] = True
    document["updated_at"] = updated_at.isoformat() if updated_at else None
    return document


def merge_update(catalog: Catalog, overrides: Mapping[str, Any] | None, update: Any) -> dict[str, Any]:
    """Validate a partial document and deep-merge it into the stored ``overrides``.

    Returns:
        The new overrides to store (only keys a user ever set).

    Raises:
        InvalidPreferences: unknown key, unknown type or channel, non-boolean switch, a critical channel
            turned off, or malformed quiet hours; ``field`` names the value.
    """
    if not isinstance(update, dict):
        raise InvalidPreferences("params", "must be an object")
    unknown = set(update) - {"channels", "types", "quiet_hours"}
    if unknown:
        raise InvalidPreferences(sorted(unknown)[0], "unknown field")
    merged: dict[str, Any] = {
        "channels": dict((overrides or {}).get("channels") or {}),
        "types": {k: dict(v) for k, v in ((overrides or {}).get("types") or {}).items()},
        "quiet_hours": (overrides or {}).get("quiet_hours"),
    }
    if "channels" in update:
        merged["channels"].update(_switches("channels", update["channels"]))
    if "types" in update:
        types = update["types"]
        if not isinstance(types, dict):
            raise InvalidPreferences("types", "must be an object")
        for name, setting in types.items():
            if name not in catalog:
                raise InvalidPreferences(f"types.{name}", "unknown notification type")
            switches = _switches(f"types.{name}", setting)
            for channel in catalog[name].locked_channels():
                if switches.get(channel) is False:
                    raise InvalidPreferences(
                        f"types.{name}.{channel}", "cannot be turned off for a critical type"
                    )
            merged["types"].setdefault(name, {}).update(switches)
    if "quiet_hours" in update:
        merged["quiet_hours"] = _quiet_hours(update["quiet_hours"])
    return merged


def _switches(field: str, value: Any) -> dict[str, bool]:
    if not isinstance(value, dict):
        raise InvalidPreferences(field, "must be an object of channel switches")
    for channel, enabled in value.items():
        if channel not in CHANNELS:
            raise InvalidPreferences(f"{field}.{channel}", "unknown channel")
        if not isinstance(enabled, bool):
            raise InvalidPreferences(f"{field}.{channel}", "must be true or false")
    return dict(value)


def _quiet_hours(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"start", "end", "timezone"}:
        raise InvalidPreferences("quiet_hours", "must be {start, end, timezone} or null")
    for key in ("start", "end"):
        # fullmatch: `$` in a pattern also matches before a final newline, and "00:00\n" cannot be read.
        if not isinstance(value.get(key), str) or not _HHMM.fullmatch(value[key]):
            raise InvalidPreferences(f"quiet_hours.{key}", "must be HH:MM (24-hour)")
    window = {"start": value["start"], "end": value["end"]}
    zone = value.get("timezone")
    if zone is None:
        return window  # the profile's time zone applies, else UTC (see with_profile_zone)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidPreferences("quiet_hours.timezone", "unknown IANA time zone") from None
    return {**window, "timezone": zone}


def with_profile_zone(overrides: dict[str, Any] | None, profile_zone: str | None) -> dict[str, Any] | None:
    """``overrides`` whose quiet hours give no time zone, given the profile's (docs/protocol.md §9)."""
    quiet_hours = (overrides or {}).get("quiet_hours")
    if overrides is None or not quiet_hours or quiet_hours.get("timezone") or not profile_zone:
        return overrides
    return {**overrides, "quiet_hours": {**quiet_hours, "timezone": profile_zone}}


def quiet_hours_end(quiet_hours: Mapping[str, str] | None, now: datetime) -> datetime | None:
    """When the quiet-hours window containing aware ``now`` ends, or ``None`` outside any window.

    Windows may wrap midnight (``22:00``–``07:00``); an empty window (start = end) never holds anything.
    """
    if not quiet_hours:
        return None
    zone = ZoneInfo(quiet_hours.get("timezone", "UTC"))
    local = now.astimezone(zone)
    start = time.fromisoformat(quiet_hours["start"])
    end = time.fromisoformat(quiet_hours["end"])
    current = local.time().replace(tzinfo=None)
    if start == end:
        return None
    inside = start <= current < end if start < end else current >= start or current < end
    if not inside:
        return None
    end_day = local.date()
    if current >= end:  # the window wrapped midnight: it ends tomorrow
        end_day += timedelta(days=1)
    return datetime.combine(end_day, end, tzinfo=zone)


def decide_channels(
    notification_type: NotificationType,
    preferences: Mapping[str, Any],
    requested: Iterable[str] | None,
) -> frozenset[str]:
    """The channels an event uses for one user.

    A channel is used when the master switch, the type's setting and the event's own ``channels`` all
    allow it; a critical type's locked channels (in-app, email) ignore the user's switches. Quiet hours
    are not applied here: they *hold back* email and push until :func:`quiet_hours_end`, never in-app.

    Args:
        notification_type: the catalog entry of the event's type.
        preferences: the user's *effective* document (see :func:`effective_preferences`).
        requested: the event's ``channels``, or ``None`` for all.
    """
    allowed = set(CHANNELS if requested is None else requested)
    master = preferences["channels"]
    per_type = preferences["types"].get(notification_type.name, notification_type.defaults)
    return frozenset(
        c
        for c in allowed
        if channel_enabled(
            c,
            master=master.get(c, True),
            type_switch=per_type.get(c, True),
            critical=notification_type.critical,
        )
    )
