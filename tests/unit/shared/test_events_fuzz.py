"""Hypothesis: the producer event parser takes any bytes and any JSON shape, and only ever answers a
valid event or :class:`InvalidEvent` (what the worker dead-letters with its reason)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import BroadcastEvent, InvalidEvent, SendEvent, parse_event

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "user_id",
    "userId",
    "user_ids",
    "type",
    "title",
    "message",
    "data",
    "channels",
    "event_id",
    "expires_at",
    "pattern",
]


def outcome(body: bytes, routing_key: str | None) -> object:
    try:
        return parse_event(body, routing_key)
    except InvalidEvent as refused:
        refusal = refused
    assert refusal.reason  # every refusal says why
    return refusal


@given(st.binary(max_size=2048), st.sampled_from([None, "notification.send", "notification.broadcast", "x"]))
def test_arbitrary_bytes_are_an_event_or_invalid(body: bytes, routing_key: str | None) -> None:
    assert isinstance(outcome(body, routing_key), SendEvent | BroadcastEvent | InvalidEvent)


@settings(max_examples=300)
@given(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=8),
    st.sampled_from(["notification.send", "notification.broadcast", "herald.events"]),
)
def test_arbitrary_event_shapes_are_an_event_or_invalid(document: dict[str, Any], routing_key: str) -> None:
    assert isinstance(
        outcome(json.dumps(document).encode(), routing_key), SendEvent | BroadcastEvent | InvalidEvent
    )


@given(
    st.text(min_size=1, max_size=200), st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=3)
)
def test_unicode_titles_and_data_either_parse_or_are_refused_with_a_reason(
    title: str, data: dict[str, str]
) -> None:
    body = json.dumps({"user_id": "u1", "type": "T", "title": title, "data": data}).encode()
    parsed = outcome(body, "notification.send")
    if isinstance(parsed, SendEvent):
        assert "\x00" not in parsed.title  # what parses can be stored
        assert all("\x00" not in k + v for k, v in parsed.data.items())
