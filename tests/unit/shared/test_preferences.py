"""``shared.preferences``: defaults, merging, validation, channel decisions and quiet hours."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.preferences import (
    Catalog,
    InvalidPreferences,
    NotificationType,
    decide_channels,
    default_preferences,
    effective_preferences,
    merge_update,
    quiet_hours_end,
)

ALL = {"in_app": True, "email": True, "push": True}
CATALOG = Catalog(
    [
        NotificationType("NEW_COMMENT", "social", {"in_app": True, "email": False, "push": False}),
        NotificationType("GRADE_RELEASED", "assessment", ALL),
        NotificationType("SECURITY_ALERT", "system", ALL, critical=True),
    ]
)


def test_defaults_come_from_the_catalog() -> None:
    document = default_preferences(CATALOG)
    assert document["channels"] == ALL
    assert document["types"]["NEW_COMMENT"] == {"in_app": True, "email": False, "push": False}
    assert set(document["types"]) == {"NEW_COMMENT", "GRADE_RELEASED", "SECURITY_ALERT"}
    assert document["quiet_hours"] is None
    assert CATALOG.categories == ("social", "assessment", "system")


def test_effective_merges_overrides_and_keeps_critical_on() -> None:
    overrides = {
        "channels": {"push": False},
        "types": {"NEW_COMMENT": {"email": True}, "SECURITY_ALERT": {"in_app": False}, "GONE": {}},
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "UTC"},
    }
    document = effective_preferences(CATALOG, overrides, datetime(2030, 1, 1, tzinfo=UTC))
    assert document["channels"] == {"in_app": True, "email": True, "push": False}
    assert document["types"]["NEW_COMMENT"] == {"in_app": True, "email": True, "push": False}
    assert document["types"]["SECURITY_ALERT"]["in_app"] is True
    assert "GONE" not in document["types"]
    assert document["quiet_hours"]["start"] == "22:00"
    assert document["updated_at"] == "2030-01-01T00:00:00+00:00"


def test_merge_update_deep_merges_into_stored_overrides() -> None:
    stored: dict[str, dict[str, Any]] = {
        "channels": {"email": False},
        "types": {"NEW_COMMENT": {"push": True}},
    }
    merged = merge_update(CATALOG, stored, {"types": {"NEW_COMMENT": {"in_app": False}}})
    assert merged == {
        "channels": {"email": False},
        "types": {"NEW_COMMENT": {"push": True, "in_app": False}},
        "quiet_hours": None,
    }
    assert stored["types"]["NEW_COMMENT"] == {"push": True}  # the input is not mutated


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ([], "params"),
        ({"colour": "red"}, "colour"),
        ({"channels": {"sms": True}}, "channels.sms"),
        ({"channels": {"email": "yes"}}, "channels.email"),
        ({"types": {"NOPE": {"in_app": True}}}, "types.NOPE"),
        ({"types": {"SECURITY_ALERT": {"email": False}}}, "types.SECURITY_ALERT.email"),
        ({"types": []}, "types"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end"),
        # `$` also matches before a final newline: stored, such a window was ignored at every send.
        ({"quiet_hours": {"start": "00:00\n", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00\n"}}, "quiet_hours.end"),
        (
            {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Base"}},
            "quiet_hours.timezone",
        ),
        ({"quiet_hours": "night"}, "quiet_hours"),
    ],
)
def test_merge_update_refuses_with_the_field(update: object, field: str) -> None:
    with pytest.raises(InvalidPreferences) as caught:
        merge_update(CATALOG, None, update)
    assert caught.value.field == field


def test_critical_push_can_be_turned_off_and_quiet_hours_cleared() -> None:
    merged = merge_update(
        CATALOG, {"quiet_hours": {"start": "1:00"}}, {"types": {"SECURITY_ALERT": {"push": False}}}
    )
    assert merged["types"]["SECURITY_ALERT"] == {"push": False}
    assert merge_update(CATALOG, merged, {"quiet_hours": None})["quiet_hours"] is None


def decide(name: str, overrides: dict[str, object] | None, requested: list[str] | None = None) -> set[str]:
    return set(decide_channels(CATALOG[name], effective_preferences(CATALOG, overrides), requested))


def test_channels_need_master_type_and_request() -> None:
    assert decide("GRADE_RELEASED", None) == {"in_app", "email", "push"}
    assert decide("NEW_COMMENT", None) == {"in_app"}
    assert decide("GRADE_RELEASED", {"channels": {"email": False}}) == {"in_app", "push"}
    assert decide("GRADE_RELEASED", {"types": {"GRADE_RELEASED": {"in_app": False}}}) == {"email", "push"}
    assert decide("GRADE_RELEASED", None, ["push"]) == {"push"}
    assert decide("NEW_COMMENT", None, ["email"]) == set()


def test_critical_types_ignore_the_switches_of_locked_channels() -> None:
    off = {"in_app": False, "email": False, "push": False}
    assert decide("SECURITY_ALERT", {"channels": off, "types": {"SECURITY_ALERT": off}}) == {
        "in_app",
        "email",
    }
    assert decide("SECURITY_ALERT", None, ["push"]) == {"push"}  # the event itself can still narrow


NIGHT = {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (datetime(2030, 6, 1, 23, 30), datetime(2030, 6, 2, 7, 0)),
        (datetime(2030, 6, 1, 3, 0), datetime(2030, 6, 1, 7, 0)),
        (datetime(2030, 6, 1, 22, 0), datetime(2030, 6, 2, 7, 0)),
        (datetime(2030, 6, 1, 7, 0), None),
        (datetime(2030, 6, 1, 12, 0), None),
    ],
)
def test_quiet_hours_wrapping_midnight(local: datetime, expected: datetime | None) -> None:
    now = local.replace(tzinfo=BERLIN).astimezone(UTC)
    end = quiet_hours_end(NIGHT, now)
    assert end == (expected.replace(tzinfo=BERLIN) if expected else None)


def test_quiet_hours_within_a_day_empty_and_absent() -> None:
    lunch = {"start": "12:00", "end": "13:00", "timezone": "UTC"}
    assert quiet_hours_end(lunch, datetime(2030, 1, 1, 12, 30, tzinfo=UTC)) == datetime(
        2030, 1, 1, 13, tzinfo=UTC
    )
    assert quiet_hours_end(lunch, datetime(2030, 1, 1, 13, 0, tzinfo=UTC)) is None
    assert quiet_hours_end({"start": "08:00", "end": "08:00", "timezone": "UTC"}, datetime.now(UTC)) is None
    assert quiet_hours_end(None, datetime.now(UTC)) is None


@given(
    now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    start=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    end=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
)
def test_quiet_hours_end_is_the_next_end_time_within_a_day(now: datetime, start: time, end: time) -> None:
    window = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "timezone": "UTC"}
    result = quiet_hours_end(window, now)
    current = now.time().replace(tzinfo=None)
    inside = (
        (start <= current < end) if start < end else (start > end and (current >= start or current < end))
    )
    assert (result is not None) == inside
    if result is not None:
        assert now < result <= now + timedelta(days=1)
        assert result.time() == end


def test_quiet_hours_without_a_zone_take_the_profiles() -> None:
    from shared.preferences import with_profile_zone

    window = {"channels": {}, "types": {}, "quiet_hours": {"start": "22:00", "end": "07:00"}}
    assert with_profile_zone(window, "Asia/Tokyo")["quiet_hours"]["timezone"] == "Asia/Tokyo"  # type: ignore[index]
    zoned = {**window, "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "UTC"}}
    assert with_profile_zone(zoned, "Asia/Tokyo") == zoned
    assert with_profile_zone(None, "Asia/Tokyo") is None
    assert with_profile_zone(window, None) == window
