"""``shared.events.parse_event``: every accepted shape and every limit of PROTOCOL §4."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from shared.events import (
    MAX_BODY_BYTES,
    MAX_DATA_BYTES,
    MAX_DATA_DEPTH,
    BroadcastEvent,
    IdempotencyKey,
    InvalidEvent,
    SendEvent,
    is_valid_user_id,
    parse_event,
)
from shared.jsonrpc import notification_frame, rpc_result

SEND = "notification.send"
BASE = {"type": "NEW_COMMENT", "title": "Hello", "message": "World"}


def parse(body: object, routing_key: str | None = SEND, message_id: str | None = None) -> object:
    return parse_event(orjson.dumps(body), routing_key, message_id)


def reason(body: object, routing_key: str | None = SEND) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse(body, routing_key)
    return caught.value.reason


def test_snake_case_single_user() -> None:
    parsed = parse({**BASE, "user_id": "u1", "event_id": "e1", "data": {"a": 1}})
    assert parsed == SendEvent(user_ids=("u1",), event_id="e1", data={"a": 1}, **BASE)


def test_camel_case_keys() -> None:
    parsed = parse({**BASE, "userId": "u1", "eventId": "e1", "expiresAt": "2030-01-01T00:00:00Z"})
    assert isinstance(parsed, SendEvent)
    assert (parsed.user_ids, parsed.event_id) == (("u1",), "e1")
    assert parsed.expires_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_user_ids_fan_out_is_deduplicated_in_order() -> None:
    parsed = parse({**BASE, "userIds": ["b", "a", "b", "c"]})
    assert isinstance(parsed, SendEvent)
    assert parsed.user_ids == ("b", "a", "c")


@pytest.mark.parametrize("pattern", [SEND, "notification.broadcast"])
def test_nestjs_envelope_takes_its_pattern_over_the_routing_key(pattern: str) -> None:
    parsed = parse({"pattern": pattern, "data": {**BASE, "userId": "u1"}}, routing_key="herald.events")
    assert isinstance(parsed, BroadcastEvent if pattern.endswith("broadcast") else SendEvent)


def test_default_exchange_routing_key_is_a_send() -> None:
    assert isinstance(parse({**BASE, "user_id": "u1"}, routing_key="herald.events"), SendEvent)
    assert isinstance(parse({**BASE, "user_id": "u1"}, routing_key=None), SendEvent)


def test_broadcast_needs_no_user() -> None:
    parsed = parse(BASE, routing_key="notification.broadcast")
    assert isinstance(parsed, BroadcastEvent)
    assert parsed.event_id is None


def test_message_id_is_the_key_unless_the_body_has_one() -> None:
    assert parse({**BASE, "user_id": "u"}, message_id="m1").event_id == "m1"  # type: ignore[attr-defined]
    assert parse({**BASE, "user_id": "u", "eventId": "e"}, message_id="m1").event_id == "e"  # type: ignore[attr-defined]
    for longest in ("m" * 255, "é" * 127 + "m"):  # an AMQP message_id holds 255 bytes: each one is a key
        assert parse({**BASE, "user_id": "u"}, message_id=longest).event_id == longest  # type: ignore[attr-defined]


def test_a_source_scopes_the_idempotency_key() -> None:
    scoped = parse({**BASE, "user_id": "u", "event_id": "e", "source": "billing-service"})
    assert scoped.idempotency_key == IdempotencyKey("billing-service", "e")  # type: ignore[attr-defined]
    unscoped = parse({**BASE, "user_id": "u"}, message_id="m1")
    assert unscoped.idempotency_key == IdempotencyKey("", "m1")  # type: ignore[attr-defined]
    from_amqp = parse({**BASE, "user_id": "u", "source": "lms"}, message_id="m1")
    assert from_amqp.idempotency_key == IdempotencyKey("lms", "m1")  # type: ignore[attr-defined]
    assert parse({**BASE, "user_id": "u", "source": "lms"}).idempotency_key is None  # type: ignore[attr-defined]
    enveloped = parse(
        {"pattern": "notification.broadcast", "data": {**BASE, "source": "a.b:c_d", "eventId": "e"}}
    )
    assert enveloped.idempotency_key == IdempotencyKey("a.b:c_d", "e")  # type: ignore[attr-defined]


@pytest.mark.parametrize("source", ["", "s" * 65, "has space", "slash/", "é", "nul\x00", 7, None])
def test_a_bad_source_is_dead_lettered_with_a_clear_reason(source: object) -> None:
    for routing_key, recipient in ((SEND, {"user_id": "u"}), ("notification.broadcast", {})):
        body = {**BASE, **recipient, "event_id": "e", "source": source}
        if source is None:
            # An explicit null is no source, as when the key is absent.
            assert parse(body, routing_key).idempotency_key == IdempotencyKey("", "e")  # type: ignore[attr-defined]
            continue
        explained = reason(body, routing_key)
        assert explained.startswith("source: "), explained
        if isinstance(source, str):
            assert "1 to 64 characters of A-Z a-z 0-9 . _ : -" in explained


def test_the_longest_source_is_accepted() -> None:
    parsed = parse({**BASE, "user_id": "u", "event_id": "e", "source": "s" * 64})
    assert parsed.idempotency_key == IdempotencyKey("s" * 64, "e")  # type: ignore[attr-defined]


def test_channels_narrow_to_known_ones() -> None:
    parsed = parse({**BASE, "user_id": "u", "channels": ["email", "in_app"]})
    assert parsed.channels == frozenset({"email", "in_app"})  # type: ignore[attr-defined]
    assert "channels" in reason({**BASE, "user_id": "u", "channels": ["sms"]})


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({**BASE}, "user_id"),
        ({**BASE, "user_id": "u", "user_ids": ["v"]}, "either user_id or user_ids"),
        ({**BASE, "user_ids": []}, "user_ids"),
        ({**BASE, "user_ids": [f"u{i}" for i in range(1001)]}, "user_ids"),
        ({**BASE, "user_id": ""}, "user_ids"),
        ({**BASE, "user_id": "x" * 129}, "user_ids"),
        ({**BASE, "user_id": "has space"}, "user_ids"),
        ({**BASE, "user_id": "u", "title": ""}, "title"),
        ({**BASE, "user_id": "u", "title": "t" * 201}, "title"),
        ({**BASE, "user_id": "u", "message": "m" * 2001}, "message"),
        ({**BASE, "user_id": "u", "data": {"x": "d" * MAX_DATA_BYTES}}, "data"),
        ({**BASE, "user_id": "u", "data": [1]}, "data"),
        ({**BASE, "user_id": "u", "type": "lower"}, "type"),
        ({"user_id": "u", "title": "t"}, "type"),
        ({**BASE, "user_id": "u", "event_id": "e" * 256}, "event_id"),
        ({**BASE, "user_id": "u", "event_id": "é" * 128}, "event_id"),  # 256 bytes in UTF-8
        ({**BASE, "user_id": "u", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"pattern": SEND, "data": "nope"}, "data"),
    ],
)
def test_invalid_events_name_the_field(body: object, where: str) -> None:
    assert where in reason(body)


def test_limits_are_inclusive() -> None:
    parsed = parse(
        {
            **BASE,
            "user_ids": ["x" * 128, *(f"u{i}" for i in range(999))],
            "title": "t" * 200,
            "message": "m" * 2000,
            "data": {"x": "d" * (MAX_DATA_BYTES - len('{"x":""}'))},
        }
    )
    assert isinstance(parsed, SendEvent)
    assert len(parsed.user_ids) == 1000


def test_body_limit_not_json_not_object_unknown_kind() -> None:
    with pytest.raises(InvalidEvent, match="over the 65536-byte limit"):
        parse_event(b" " * (MAX_BODY_BYTES + 1), SEND)
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        parse_event(b"{", SEND)
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        parse_event(b"[]", SEND)
    assert "unknown event kind" in reason({**BASE, "user_id": "u"}, "notification.delete")


def test_data_nested_deeper_than_it_can_be_stored_is_invalid() -> None:
    # Parses (orjson reads 1,024 levels) but cannot be serialized again (254): refused, not a TypeError.
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    body = b'{"type": "NEW_COMMENT", "user_id": "u", "title": "t", "data": ' + deep + b"}"
    with pytest.raises(InvalidEvent, match="data"):
        parse_event(body, SEND)


def nested(levels: int) -> bytes:
    """A send event's body whose ``data`` is nested ``levels`` deep (``data`` itself the first level)."""
    data = b'{"x":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
    return b'{"type": "NEW_COMMENT", "user_id": "u", "title": "t", "data": ' + data + b"}"


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 253, 254])
@pytest.mark.parametrize("kind", [SEND, "notification.broadcast"])
def test_data_too_deep_for_the_documents_that_carry_it_is_invalid(levels: int, kind: str) -> None:
    """orjson writes 254 levels: data 253 deep passed when checked alone, then its frame (two levels
    more) could not be written, nor the ``notifications.list`` reply (four)."""
    with pytest.raises(InvalidEvent) as caught:
        parse_event(nested(levels), kind)
    assert caught.value.reason == f"data: Value error, must be nested at most {MAX_DATA_DEPTH} levels deep"


def test_data_as_deep_as_allowed_fits_its_frame_and_the_inbox_reply() -> None:
    event = parse_event(nested(MAX_DATA_DEPTH), SEND)
    assert isinstance(event, SendEvent)
    notification_frame("notification:new", {"id": "n", "data": event.data})
    rpc_result({"items": [{"id": "n", "data": event.data}]})


def test_an_unknown_kind_is_quoted_by_its_start_only() -> None:
    # A NestJS envelope's pattern is bounded only by the body: the reason would have been ~160 KB.
    pattern = "notification." + "\U000f0000" * 16000
    quoted = reason({"pattern": pattern, "data": {}}, None)
    assert quoted == f"routing key: unknown event kind {pattern[:64]!r}…"
    assert (
        reason({**BASE, "user_id": "u"}, "notification.x")
        == "routing key: unknown event kind 'notification.x'"
    )


def test_user_id_check() -> None:
    assert is_valid_user_id("a.b:c@d-e_f")
    assert not is_valid_user_id("a/b")
    assert not is_valid_user_id("")


# ------------------------------------------------------------------------------ §10: url, actions, keys


def test_url_actions_and_collapse_key_are_parsed() -> None:
    event = parse(
        {
            **BASE,
            "user_id": "u1",
            "url": "https://app.example/threads/7",
            "actions": [
                {"id": "accept", "label": "Accept invitation", "url": "https://app.example/accept"},
                {"id": "decline", "label": "Decline"},
            ],
            "collapseKey": "thread-7",
        }
    )
    assert isinstance(event, SendEvent)
    assert event.url == "https://app.example/threads/7"
    assert [(a.id, a.label, a.url) for a in event.actions] == [
        ("accept", "Accept invitation", "https://app.example/accept"),
        ("decline", "Decline", None),
    ]
    assert event.collapse_key == "thread-7"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "ftp://files.example/x"}, "url"),
        ({"url": "https://app.example/a\nb"}, "url"),
        ({"url": "https://app.example/" + "a" * 2000}, "url"),
        ({"actions": [{"id": "a", "label": "x" * 41}]}, "actions.0.label"),
        ({"actions": [{"id": "a", "label": ""}]}, "actions.0.label"),
        ({"actions": [{"id": "a b", "label": "x"}]}, "actions.0.id"),
        ({"actions": [{"id": "a", "label": "x", "url": "data:text/html,hi"}]}, "actions.0.url"),
        ({"actions": [{"id": "a", "label": "x", "extra": 1}]}, "actions.0.extra"),
        ({"actions": [{"id": "a", "label": "x"}, {"id": "a", "label": "y"}]}, "actions"),
        ({"actions": [{"id": str(i), "label": "x"} for i in range(4)]}, "actions"),
        ({"collapse_key": "k" * 129}, "collapse_key"),
        ({"collapse_key": ""}, "collapse_key"),
    ],
)
def test_inbox_state_limits_name_the_field(fields: dict[str, object], where: str) -> None:
    assert reason({**BASE, "user_id": "u1", **fields}).startswith(f"{where}:")


def test_inbox_state_limits_are_inclusive() -> None:
    url = "https://a.example/" + "a" * (2000 - len("https://a.example/"))
    event = parse(
        {
            **BASE,
            "user_id": "u1",
            "url": url,
            "actions": [{"id": str(i), "label": "x" * 40} for i in range(3)],
            "collapse_key": "k" * 128,
        }
    )
    assert isinstance(event, SendEvent)
    assert (event.url, len(event.actions), event.collapse_key) == (url, 3, "k" * 128)


def test_profile_events_carry_only_the_fields_present() -> None:
    from shared.events import ProfileEvent

    event = parse({"userId": "u1", "email": "a@b.example", "timezone": None}, "user.profile")
    assert isinstance(event, ProfileEvent)
    assert event.user_id == "u1"
    assert event.changes() == {"email": "a@b.example", "timezone": None}
    enveloped = parse({"pattern": "user.profile", "data": {"user_id": "u2", "locale": "pt-BR"}}, None)
    assert isinstance(enveloped, ProfileEvent)
    assert enveloped.changes() == {"locale": "pt-BR"}
    assert reason({"user_id": "u1", "email": "not-an-address"}, "user.profile").startswith("email")
    assert reason({"user_id": "u1", "timezone": "Mars/Base"}, "user.profile").startswith("timezone")
    assert reason({"user_id": "bad id!"}, "user.profile").startswith("user_id")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", "bad\x00title"),
        ("message", "bad\x00message"),
        ("data", {"k": "v\x00"}),
        ("data", {"k\x00": 1}),
        ("data", {"deep": [{"k": ["\x00"]}]}),
        ("event_id", "e\x00"),
        ("collapse_key", "k\x00"),
        ("actions", [{"id": "ok", "label": "O\x00K"}]),
    ],
)
def test_nul_characters_are_refused_at_parse_time(field: str, value: object) -> None:
    """Postgres text and jsonb cannot hold U+0000: refusing it here costs nothing, in the store a batch
    bisection."""
    body = {"user_id": "u1", "type": "T", "title": "t", field: value}
    assert reason(body).startswith(field)
    assert "NUL" in reason(body)


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    body = {"user_id": "u1", "type": "T", "title": "t", "data": {"path": "C:\\u0000"}}
    assert parse(body) is not None


def test_a_profiles_changed_at_needs_an_offset_and_may_not_lie_far_ahead() -> None:
    from shared.events import MAX_CLOCK_SKEW, ProfileEvent

    event = parse(
        {"user_id": "u1", "email": "a@b.example", "changedAt": "2026-01-02T03:04:05+01:00"}, "user.profile"
    )
    assert isinstance(event, ProfileEvent)
    assert event.changed_at == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert "changed_at" not in event.changes()  # when, not what: never a field of the profile itself
    assert "time zone offset" in reason(
        {"user_id": "u1", "changed_at": "2026-01-02T03:04:05"}, "user.profile"
    )
    # Far ahead, it would make every later change of the user's profile look older than it, and be refused.
    ahead = (datetime.now(UTC) + MAX_CLOCK_SKEW * 2).isoformat()
    assert reason({"user_id": "u1", "changed_at": ahead}, "user.profile").startswith("changed_at")
    slightly_ahead = (datetime.now(UTC) + MAX_CLOCK_SKEW / 2).isoformat()
    assert isinstance(parse({"user_id": "u1", "changed_at": slightly_ahead}, "user.profile"), ProfileEvent)
