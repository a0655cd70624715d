"""``shared.preference_flags``: the seed's camelCase flags become Herald's preferences document."""

from __future__ import annotations

import pytest

from shared.preference_flags import camel_flag, expand_flags, type_flags
from shared.preferences import Catalog, InvalidPreferences, NotificationType, merge_update

ALL = {"in_app": True, "email": True, "push": True}
OFF = {"in_app": False, "email": False, "push": False}
CATALOG = Catalog(
    [
        NotificationType("COURSE_NEW_CONTENT", "course", ALL),
        NotificationType("NEW_REPLY", "social", ALL),
        NotificationType("SECURITY_ALERT", "system", ALL, critical=True),
    ]
)


def test_flag_names_are_the_types_in_camel_case_plus_the_seeds_own() -> None:
    assert camel_flag("COURSE_NEW_CONTENT") == "courseNewContent"
    flags = type_flags(CATALOG)
    assert flags["newCourseContent"] == flags["courseNewContent"] == "COURSE_NEW_CONTENT"
    assert flags["newReply"] == "NEW_REPLY"
    # A seed name whose type is not in this catalog is not offered.
    assert "courseUpdates" not in flags


def test_flags_switch_a_type_on_every_channel_and_masters_switch_channels() -> None:
    update = expand_flags(CATALOG, {"newCourseContent": False, "newReply": True, "pushNotifications": False})
    assert update == {
        "types": {"COURSE_NEW_CONTENT": OFF, "NEW_REPLY": ALL},
        "channels": {"push": False},
    }
    merged = merge_update(CATALOG, None, update)
    assert merged["types"]["COURSE_NEW_CONTENT"] == OFF


def test_herald_members_pass_through_and_flags_merge_into_them() -> None:
    update = expand_flags(
        CATALOG,
        {"types": {"NEW_REPLY": {"push": False}}, "courseNewContent": False, "quietHours": None, "x": 1},
    )
    assert update == {
        "types": {"NEW_REPLY": {"push": False}, "COURSE_NEW_CONTENT": OFF},
        "quiet_hours": None,
        "x": 1,  # left for merge_update, which refuses it by name
    }
    with pytest.raises(InvalidPreferences) as caught:
        merge_update(CATALOG, None, update)
    assert caught.value.field == "x"


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"securityAlert": False}, "securityAlert"),
        ({"newReply": "no"}, "newReply"),
        ({"emailNotifications": 0}, "emailNotifications"),
        ({"types": [], "newReply": True}, "types"),
    ],
)
def test_refusals_name_the_flag(update: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidPreferences) as caught:
        expand_flags(CATALOG, update)
    assert caught.value.field == field


def test_a_critical_type_may_be_switched_on() -> None:
    assert expand_flags(CATALOG, {"securityAlert": True}) == {"types": {"SECURITY_ALERT": ALL}}
