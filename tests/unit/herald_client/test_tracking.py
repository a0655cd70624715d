"""The SDK's sans-I/O parts: the delivery tracker (each version of a notification once) and the
producer's local checks (no I/O)."""

from __future__ import annotations

import pytest

from herald_client.producer import InvalidEvent, _check_common, _check_inbox_fields, _check_recipients
from herald_client.protocol import MAX_TITLE_CHARS
from herald_client.tracking import DeliveryTracker


def tracker_at(watermark: int, *seen: int) -> DeliveryTracker:
    """A tracker whose watermark is already anchored, after `seen` arrived live."""
    tracker = DeliveryTracker()
    tracker.watermark = watermark
    for seq in seen:
        tracker.advance(seq)
    return tracker


def test_the_watermark_waits_for_a_gap_to_fill() -> None:
    tracker = tracker_at(10, 12, 13)
    assert tracker.watermark == 10  # 11 may still be in flight from another worker
    tracker.advance(11)
    assert tracker.watermark == 13
    tracker.advance(9)
    assert tracker.watermark == 13


def test_a_sync_page_moves_the_watermark_past_what_it_covered() -> None:
    tracker = tracker_at(5, 9)
    tracker.synced_up_to(8)
    assert tracker.watermark == 8
    tracker.advance(10)  # 9 was seen live before the sync: still counted
    assert tracker.watermark == 10
    tracker.synced_up_to(3)
    assert tracker.watermark == 10


def test_a_repeat_is_dropped_and_a_higher_seq_replaces() -> None:
    tracker = DeliveryTracker()
    assert tracker.deliver("n1", 5) == "new"
    assert tracker.deliver("n1", 5) == "repeat"  # a redelivery
    assert tracker.deliver("n1", 9) == "replacement"  # collapsed: same id, new seq
    assert tracker.deliver("n1", 7) == "repeat"  # an older version arriving late
    assert tracker.deliver("n1", 9) == "repeat"
    assert tracker.deliver("n2", 6) == "new"


def test_a_live_broadcast_and_its_stored_copy_are_one_version() -> None:
    tracker = DeliveryTracker()
    assert tracker.deliver("b1", None) == "new"
    assert tracker.deliver("b1", 12) == "repeat"  # the same broadcast, returned by sync
    assert tracker.deliver("b1", None) == "repeat"


def test_a_repeated_id_is_dropped_and_old_ids_are_forgotten() -> None:
    tracker = DeliveryTracker(remembered=2)
    for notification_id, seq in (("a", 1), ("b", 2), ("a", 3), ("c", 4)):
        tracker.deliver(notification_id, seq)
    # "a" was refreshed by its replacement, so "b" is the one forgotten.
    assert tracker.deliver("a", 3) == "repeat"
    assert tracker.deliver("b", 2) == "new"


def test_the_watermark_does_not_move_before_the_first_session() -> None:
    tracker = DeliveryTracker()
    tracker.advance(3)
    tracker.synced_up_to(7)
    assert tracker.watermark is None


def test_an_unanchored_tracker_anchors_at_last_seq_when_nothing_was_seen() -> None:
    tracker = DeliveryTracker()
    tracker.anchor(7)
    assert tracker.watermark == 7
    tracker.advance(8)
    assert tracker.watermark == 8


def test_live_frames_seen_while_unanchored_hold_the_anchor_below_them() -> None:
    tracker = DeliveryTracker()
    tracker.advance(5)
    tracker.advance(6)
    assert tracker.watermark is None
    tracker.anchor(7)  # from just below 5: a sync recovers 7 (lost), not the history before 5
    assert tracker.watermark == 6
    tracker.advance(8)
    assert tracker.watermark == 6  # 7 is still missing
    tracker.advance(7)
    assert tracker.watermark == 8


def test_a_gap_among_the_frames_seen_while_unanchored_holds_the_anchor_back() -> None:
    tracker = DeliveryTracker()
    tracker.advance(7)
    tracker.advance(5)
    tracker.anchor(9)
    assert tracker.watermark == 5  # 6 may be missing
    tracker.advance(6)
    assert tracker.watermark == 7  # 7 was remembered


def test_seen_seqs_above_the_anchor_are_kept_for_the_run_after_it() -> None:
    tracker = DeliveryTracker()
    tracker.advance(3)
    tracker.advance(10)
    tracker.anchor(1)
    assert tracker.watermark == 1  # min(last_seq, lowest seen - 1)
    tracker.advance(2)
    assert tracker.watermark == 3
    tracker.synced_up_to(12)
    tracker.advance(13)
    assert tracker.watermark == 13


def test_anchor_is_a_no_op_once_there_is_a_watermark() -> None:
    tracker = tracker_at(4, 6)
    tracker.anchor(9)
    after_anchor = tracker.watermark
    tracker.advance(5)
    assert (after_anchor, tracker.watermark) == (4, 6)  # the anchor changed nothing; 5 closed the gap


def test_an_unanchored_tracker_remembers_a_bounded_number_of_seqs() -> None:
    tracker = DeliveryTracker(remembered=3)
    for seq in range(10, 20):
        tracker.advance(seq)
    tracker.anchor(30)
    assert tracker.watermark == 12  # 10–12 were remembered; 13 onward was not
    tracker.advance(13)
    assert tracker.watermark == 13


def _event(**fields: object) -> dict[str, object]:
    return {"event_id": "e1", "type": "GRADE_RELEASED", "title": "Graded", "message": "", "data": {}} | fields


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "grade"}, "type"),
        ({"title": ""}, "title"),
        ({"title": "x" * (MAX_TITLE_CHARS + 1)}, "title"),
        ({"message": "m" * 2001}, "message"),
        ({"event_id": "e" * 256}, "event_id"),
        ({"event_id": "é" * 128}, "event_id"),
        ({"data": {"blob": "x" * 9000}}, "data"),
    ],
)
def test_the_producer_refuses_what_the_worker_would_dead_letter(
    fields: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidEvent, match=f"^{field}:"):
        _check_common(_event(**fields))


def test_the_producer_checks_recipients() -> None:
    _check_recipients(["u1", "team:42"])
    with pytest.raises(InvalidEvent, match="user_ids"):
        _check_recipients([])
    with pytest.raises(InvalidEvent, match="not a valid user id"):
        _check_recipients(["has space"])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "https://a.example/" + "a" * 2000}, "url"),
        ({"actions": [{"id": str(i), "label": "x"} for i in range(4)]}, "actions"),
        ({"actions": [{"id": "a", "label": "x" * 41}]}, "actions.0.label"),
        ({"actions": [{"id": "a", "label": "x", "url": "ftp://a.example"}]}, "actions.0.url"),
        ({"collapse_key": "k" * 129}, "collapse_key"),
    ],
)
def test_the_producer_refuses_inbox_fields_over_their_limits(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidEvent, match=f"^{field}:"):
        _check_inbox_fields(_event(**fields))
    _check_inbox_fields(
        _event(url="https://a.example/", actions=[{"id": "a", "label": "OK"}], collapse_key="k")
    )
