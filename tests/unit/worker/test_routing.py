"""worker.routing without a broker or a database: who gets what, on which channel, and what is counted."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from shared.events import BroadcastEvent, IdempotencyKey, SendEvent
from shared.preferences import Catalog, NotificationType
from worker.routing import SendRouting, notification_id, route_broadcast
from worker.writes import Writes, Written

if TYPE_CHECKING:
    from collections.abc import Mapping

    from worker.routing import Outgoing
    from worker.writes import Job, NewRows

CATALOG = Catalog(
    [
        NotificationType("COURSE_NEW_CONTENT", "course", {"in_app": True, "email": True, "push": True}),
        NotificationType(
            "SECURITY_ALERT", "security", {"in_app": True, "email": True, "push": True}, critical=True
        ),
    ]
)
NOW = datetime(2025, 1, 15, 23, 0, tzinfo=UTC)
ALL_OFF = {"in_app": False, "email": False, "push": False}
NIGHT = {"start": "22:00", "end": "07:00", "timezone": "UTC"}


def unscoped(key: str) -> IdempotencyKey:
    """The idempotency key of an event without a ``source``."""
    return IdempotencyKey("", key)


def send(type_: str = "COURSE_NEW_CONTENT", **fields: Any) -> SendEvent:
    return SendEvent.model_validate({"user_ids": ["u1"], "type": type_, "title": "Hello", **fields})


def route(
    *events: SendEvent,
    overrides: Mapping[str, Mapping[str, Any] | None] | None = None,
    stored: Mapping[tuple[str, IdempotencyKey], dict[str, Any]] | None = None,
) -> tuple[NewRows, Outgoing]:
    """Route a batch as the pipeline does, with the insert answered by consecutive seqs."""
    rows, _, out = route_writes(*events, overrides=overrides, stored=stored)
    return rows, out


def route_writes(
    *events: SendEvent,
    overrides: Mapping[str, Mapping[str, Any] | None] | None = None,
    stored: Mapping[tuple[str, IdempotencyKey], dict[str, Any]] | None = None,
    targets: Mapping[tuple[str, str], str] | None = None,
) -> tuple[NewRows, Writes, Outgoing]:
    """Route a batch with open collapse ``targets``: new rows get seqs 1.., collapses 100.. (count + 1)."""
    routing = SendRouting(events, overrides or {}, CATALOG, NOW)
    writes = routing.writes(stored or {}, targets or {})
    rows, collapses = writes.rows, writes.collapses
    written = Written(
        [(seq, NOW) for seq in range(1, len(rows) + 1)],
        [(100 + i, 1 + n, NOW) for i, n in enumerate(collapses.count)],
    )
    return rows, writes, routing.outgoing(written)


def jobs(out: Outgoing) -> dict[str, Job]:
    """The email/push jobs by channel."""
    return {job.channel: job for job in out.deliveries}


def test_without_overrides_every_channel_is_used() -> None:
    rows, out = route(send())
    assert rows.user_id == ["u1"]
    assert [user for user, _ in out.frames] == ["u1"]
    assert set(jobs(out)) == {"email", "push"}
    assert out.outcomes == {"stored": 1, "muted": 0, "duplicate": 0}


def test_master_switch_off_mutes_the_event() -> None:
    rows, out = route(send(), overrides={"u1": {"channels": ALL_OFF}})
    assert (len(rows), out.frames, out.deliveries) == (0, [], [])
    assert out.outcomes == {"stored": 0, "muted": 1, "duplicate": 0}


def test_type_switch_off_mutes_only_that_type() -> None:
    overrides = {"u1": {"types": {"COURSE_NEW_CONTENT": ALL_OFF}}}
    rows, out = route(send(), overrides=overrides)
    assert (len(rows), out.deliveries) == (0, [])
    assert out.outcomes["muted"] == 1
    rows, out = route(send("SECURITY_ALERT"), overrides=overrides)
    assert len(rows) == 1


def test_users_with_equal_overrides_share_a_document_and_others_keep_their_own() -> None:
    email_off = {"channels": {"email": False}}
    overrides = {"u1": email_off, "u2": dict(email_off), "u3": {"channels": {"push": False}}, "u4": None}
    _, out = route(send(user_ids=["u1", "u2", "u3", "u4"]), overrides=overrides)
    channels = sorted((job.user_id, job.channel) for job in out.deliveries)
    assert channels == [("u1", "push"), ("u2", "push"), ("u3", "email"), ("u4", "email"), ("u4", "push")]
    assert sorted(user for user, _ in out.frames) == ["u1", "u2", "u3", "u4"]


def test_a_critical_type_keeps_in_app_and_email_whatever_the_switches() -> None:
    overrides = {"u1": {"channels": ALL_OFF, "types": {"SECURITY_ALERT": ALL_OFF}}}
    rows, out = route(send("SECURITY_ALERT"), overrides=overrides)
    assert rows.user_id == ["u1"]
    assert set(jobs(out)) == {"email"}  # push is not locked on
    assert out.outcomes["stored"] == 1


def test_quiet_hours_hold_email_and_push_but_never_in_app() -> None:
    rows, out = route(send(), overrides={"u1": {"quiet_hours": NIGHT}})
    assert (len(rows), len(out.frames)) == (1, 1)
    held = {channel: job.deliver_after for channel, job in jobs(out).items()}
    morning = datetime(2025, 1, 16, 7, 0, tzinfo=UTC)
    assert held == {"email": morning, "push": morning}


def test_outside_quiet_hours_jobs_go_now() -> None:
    morning = {"start": "08:00", "end": "12:00", "timezone": "UTC"}
    _, out = route(send(), overrides={"u1": {"quiet_hours": morning}})
    assert {job.deliver_after for job in jobs(out).values()} == {None}


def test_the_events_channels_narrow_what_preferences_allow() -> None:
    rows, out = route(send(channels=["email"]))
    assert (len(rows), out.frames, set(jobs(out))) == (0, [], {"email"})
    overrides = {"u1": {"channels": {"push": False}}}
    rows, out = route(send(channels=["in_app", "push"]), overrides=overrides)
    assert (len(rows), out.deliveries) == (1, [])
    rows, out = route(send(channels=["push"]), overrides=overrides)
    assert out.outcomes["muted"] == 1


def test_the_same_event_twice_in_one_batch_is_stored_once() -> None:
    rows, out = route(send(event_id="k1"), send(event_id="k1"))
    assert rows.user_id == ["u1"]
    assert (len(out.frames), len(out.deliveries)) == (1, 2)
    assert out.outcomes == {"stored": 1, "muted": 0, "duplicate": 1}


def test_an_event_stored_before_is_published_again_as_stored() -> None:
    previous = {"id": "n1", "seq": 7, "type": "COURSE_NEW_CONTENT", "title": "Hello", "count": 1}
    rows, out = route(send(event_id="k1"), stored={("u1", unscoped("k1")): previous})
    assert len(rows) == 0
    assert orjson.loads(out.frames[0][1])["params"]["seq"] == 7
    assert out.deliveries == []  # recorded with the stored row, in its transaction
    assert out.outcomes == {"stored": 0, "muted": 0, "duplicate": 1}


def test_the_same_event_id_from_two_sources_is_two_notifications() -> None:
    rows, out = route(send(event_id="k1", source="billing"), send(event_id="k1", source="courses"))
    assert rows.idempotency_key == [IdempotencyKey("billing", "k1"), IdempotencyKey("courses", "k1")]
    assert len(set(rows.id)) == 2
    assert out.outcomes == {"stored": 2, "muted": 0, "duplicate": 0}
    again, repeated = route(send(event_id="k1", source="billing"), send(event_id="k1", source="billing"))
    assert (len(again), repeated.outcomes["duplicate"]) == (1, 1)


def test_a_source_changes_the_notification_id_and_no_source_keeps_the_old_one() -> None:
    assert notification_id(unscoped("k1")) == hashlib.blake2b(b"k1", digest_size=16).hexdigest()
    scoped = {notification_id(IdempotencyKey(source, "k1")) for source in ("a", "b", "a:b", "a.b")}
    assert len(scoped) == 4
    assert notification_id(unscoped("k1")) not in scoped
    # A source is not a prefix of the key: ("a", "bk1") and ("ab", "k1") are different events.
    assert notification_id(IdempotencyKey("a", "bk1")) != notification_id(IdempotencyKey("ab", "k1"))


def test_a_stored_copy_from_another_source_is_not_a_duplicate() -> None:
    previous = {"id": "n1", "seq": 7, "type": "COURSE_NEW_CONTENT", "title": "Hello", "count": 1}
    rows, out = route(send(event_id="k1", source="billing"), stored={("u1", unscoped("k1")): previous})
    assert (len(rows), out.outcomes["stored"]) == (1, 1)
    rows, out = route(
        send(event_id="k1", source="billing"), stored={("u1", IdempotencyKey("billing", "k1")): previous}
    )
    assert (len(rows), out.outcomes["duplicate"]) == (0, 1)


def test_a_broadcast_outside_in_app_stores_nothing() -> None:
    event = BroadcastEvent.model_validate(
        {"type": "COURSE_NEW_CONTENT", "title": "All", "channels": ["email"]}
    )
    routing = route_broadcast(event, CATALOG, NOW)
    assert routing.muted
    assert routing.outgoing(0).outcomes == {"muted": 1}
    stored = route_broadcast(event.model_copy(update={"channels": None}), CATALOG, NOW).outgoing(3)
    assert (stored.rows, stored.outcomes, len(stored.broadcasts)) == (3, {"broadcast": 1}, 1)


# ------------------------------------------------------------------------------------------- collapse


def test_events_of_one_collapse_key_in_one_batch_become_one_new_row_with_the_latest_content() -> None:
    events = [send(event_id=f"c{i}", collapse_key="thread-1", title=f"comment {i}") for i in range(4)]
    rows, writes, out = route_writes(*events, send(event_id="other", title="unrelated"))
    assert rows.user_id == ["u1", "u1"]
    assert rows.collapse_key == [None, "thread-1"]
    assert rows.count == [1, 4]
    assert rows.content.title == ["unrelated", "comment 3"]
    collapsed_row = rows.idempotency_key.index(unscoped("c0"))  # the first event's key (and id) names the row
    assert rows.id[collapsed_row] == notification_id(unscoped("c0"))
    # The other three keys are remembered against that id: their redeliveries are duplicates.
    assert writes.keys == [("u1", unscoped(f"c{i}"), notification_id(unscoped("c0"))) for i in (1, 2, 3)]
    frames = [orjson.loads(frame)["params"] for _, frame in out.frames]
    assert [(f["title"], f["count"]) for f in frames] == [("unrelated", 1), ("comment 3", 4)]
    # One job per channel for the collapsed notification, named by its stable job key; stored in-app, the
    # jobs keep no copy of it (sql/009).
    recorded = [(job.job_key, job.notification) for job in out.deliveries]
    assert sorted(recorded) == sorted(
        (f"{nid}:u1:{channel}", None)
        for nid in (notification_id(unscoped("other")), notification_id(unscoped("c0")))
        for channel in ("email", "push")
    )
    assert out.outcomes == {"stored": 5, "muted": 0, "duplicate": 0}


def test_a_collapse_into_a_stored_unread_row_updates_it_under_its_id() -> None:
    events = [send(event_id=f"late{i}", collapse_key="thread-1", title=f"late {i}") for i in range(2)]
    rows, writes, out = route_writes(*events, targets={("u1", "thread-1"): "open-row"})
    assert len(rows) == 0
    collapses = writes.collapses
    assert (collapses.user_id, collapses.id, collapses.count) == (["u1"], ["open-row"], [2])
    assert collapses.content.title == ["late 1"]
    assert writes.keys == [("u1", unscoped(f"late{i}"), "open-row") for i in (0, 1)]
    (frame,) = [orjson.loads(frame)["params"] for _, frame in out.frames]
    assert (frame["id"], frame["seq"], frame["count"]) == ("open-row", 100, 3)
    # A later version of a job is a row of its own once the first is final: its id carries the version.
    assert sorted((job.id, job.job_key, job.version) for job in out.deliveries) == [
        ("open-row:u1:email:100", "open-row:u1:email", 100),
        ("open-row:u1:push:100", "open-row:u1:push", 100),
    ]


def test_a_redelivered_collapse_event_is_a_duplicate_not_one_more() -> None:
    stored = {"id": "open-row", "seq": 9, "type": "COURSE_NEW_CONTENT", "title": "t", "count": 3}
    rows, writes, out = route_writes(
        send(event_id="late0", collapse_key="thread-1"),
        stored={("u1", unscoped("late0")): stored},
        targets={("u1", "thread-1"): "open-row"},
    )
    assert (len(rows), len(writes.collapses), writes.keys) == (0, 0, [])
    assert orjson.loads(out.frames[0][1])["params"]["count"] == 3
    assert out.outcomes["duplicate"] == 1


def test_collapse_keys_are_per_user() -> None:
    event = SendEvent.model_validate(
        {"user_ids": ["u1", "u2"], "type": "COURSE_NEW_CONTENT", "title": "t", "collapse_key": "k"}
    )
    rows, writes, _ = route_writes(event, targets={("u2", "k"): "u2-row"})
    assert (rows.user_id, rows.count) == (["u1"], [1])
    assert writes.collapses.user_id == ["u2"]


def test_broadcast_jobs_follow_the_send_rule_and_quiet_hours() -> None:
    from worker.broadcast_routing import broadcast_jobs

    event = BroadcastEvent.model_validate({"type": "COURSE_NEW_CONTENT", "title": "Hi"})
    routing = route_broadcast(event, CATALOG, NOW)
    audience: dict[str, Mapping[str, Any] | None] = {
        "plain": None,
        "no-mail": {"channels": {"email": False}, "types": {}, "quiet_hours": None},
        "asleep": {"channels": {}, "types": {}, "quiet_hours": NIGHT},
        "muted": {"channels": ALL_OFF, "types": {}, "quiet_hours": None},
    }
    result = broadcast_jobs(routing, audience, CATALOG, NOW)
    morning = datetime(2025, 1, 16, 7, 0, tzinfo=UTC)
    assert sorted(result.jobs) == sorted(
        [
            ("plain", "email", None),
            ("plain", "push", None),
            ("no-mail", "push", None),
            ("asleep", "email", morning),
            ("asleep", "push", morning),
        ]
    )
    assert result.notification["id"] == routing.notification_id
    assert result.notification["title"] == "Hi"
    only_push = BroadcastEvent.model_validate(
        {"type": "COURSE_NEW_CONTENT", "title": "Hi", "channels": ["push"]}
    )
    pushed = broadcast_jobs(route_broadcast(only_push, CATALOG, NOW), {"plain": None}, CATALOG, NOW)
    assert pushed.jobs == [("plain", "push", None)]
