"""The seed's flat camelCase preference flags, accepted beside Herald's own document. Pure functions.

The system Herald replaces kept preferences as one boolean per notification kind
(``{"newCourseContent": false, "courseUpdates": true}``, sent with ``PUT /api/notifications/preferences``).
:func:`expand_flags` turns such flags into Herald's partial Preferences document, so ``preferences.update``
takes either shape (or both at once) on every path:

- a type's flag is its name in camelCase (``COURSE_NEW_CONTENT`` → ``courseNewContent``), or one of the
  seed's own names in :data:`SEED_TYPE_FLAGS`; it switches that type on or off on every channel. Turning
  a critical type off is refused (its in-app and email channels cannot be), naming the flag;
- ``inAppNotifications`` / ``emailNotifications`` / ``pushNotifications`` are the master switches;
- ``quietHours`` is ``quiet_hours``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from shared.events import CHANNELS
from shared.preferences import InvalidPreferences

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shared.preferences import Catalog

#: The seed's documented flag names whose spelling differs from the camelCase type name.
SEED_TYPE_FLAGS: Final = {
    "newCourseContent": "COURSE_NEW_CONTENT",
    "courseUpdates": "COURSE_UPDATE",
    "assignmentDeadlines": "ASSIGNMENT_DEADLINE",
}
CHANNEL_FLAGS: Final = {
    "inAppNotifications": "in_app",
    "emailNotifications": "email",
    "pushNotifications": "push",
}
DOCUMENT_KEYS: Final = frozenset({"channels", "types", "quiet_hours", "updated_at"})


def camel_flag(type_name: str) -> str:
    """A type's flag name: ``COURSE_NEW_CONTENT`` → ``courseNewContent``."""
    head, *rest = type_name.lower().split("_")
    return head + "".join(word.capitalize() for word in rest)


def type_flags(catalog: Catalog) -> dict[str, str]:
    """Every flag name that switches a catalog type, mapped to the type."""
    flags = {camel_flag(name): name for name in catalog.types}
    flags.update({flag: name for flag, name in SEED_TYPE_FLAGS.items() if name in catalog})
    return flags


def expand_flags(catalog: Catalog, update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` with its camelCase flags turned into Herald's document members (see the module docstring).

    Members that are neither Herald's nor flags are left for :func:`shared.preferences.merge_update`, which
    refuses them by name.

    Raises:
        InvalidPreferences: a flag that is not a boolean, or that turns a critical type off.
    """
    flags = type_flags(catalog)
    document: dict[str, Any] = {}
    channels: dict[str, bool] = {}
    types: dict[str, dict[str, bool]] = {}
    for key, value in update.items():
        if key in DOCUMENT_KEYS or (key not in flags and key not in CHANNEL_FLAGS and key != "quietHours"):
            document[key] = value
        elif key == "quietHours":
            document["quiet_hours"] = value
        elif not isinstance(value, bool):
            raise InvalidPreferences(key, "must be true or false")
        elif key in CHANNEL_FLAGS:
            channels[CHANNEL_FLAGS[key]] = value
        elif not value and catalog[flags[key]].critical:
            raise InvalidPreferences(key, "cannot be turned off for a critical type")
        else:
            types[flags[key]] = dict.fromkeys(CHANNELS, value)
    if channels:
        document["channels"] = {**_object(document, "channels"), **channels}
    if types:
        document["types"] = {**_object(document, "types"), **types}
    return document


def _object(document: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The document's ``key`` member that flags merge into (``{}`` when absent)."""
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise InvalidPreferences(key, "must be an object")
    return value
