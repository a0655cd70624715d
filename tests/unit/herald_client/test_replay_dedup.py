"""A long session is not shown again by the sync after it, and the seqs held above a gap stay bounded.

A broadcast's own ``seq`` never arrives live (its frame has none: PROTOCOL amendment 36), so the watermark
waits below it and every later live ``seq`` is held. The client's inbox logic is driven here over a store
standing in for the server (the same cases as clients/js/test/tracking.test.mjs).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from herald_client.errors import HeraldRequestError
from herald_client.inbox import InboxView
from herald_client.tracking import HELD_SEQS, REMEMBERED_IDS, DeliveryTracker

if TYPE_CHECKING:
    import pytest


class StoredInbox(InboxView):
    """The client's inbox logic over a list of stored notifications instead of a connection."""

    backoff_base = backoff_max = 0.0
    _closing = False

    def __init__(self, last_seq: int) -> None:
        super().__init__()
        self.stored: list[dict[str, Any]] = []  # seq ascending, as notifications.sync returns them
        self.last_seq = last_seq
        self.answering = True  # False: every request fails with 5003 (the worker does not answer)
        self.delivered: list[tuple[str, bool]] = []  # (id, replayed) of each notification:new
        self.syncs_from: list[int] = []  # the ``since`` of each sync page
        self.most_held = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._take_connected({"last_seq": last_seq, "unread_count": 0, "unseen_count": 0})

    async def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        if not self.answering:
            raise HeraldRequestError(5003, "worker unavailable")
        if method == "notifications.unread_count":
            return {"count": 0, "unseen_count": 0, "last_seq": self.last_seq}
        assert method == "notifications.sync"
        assert params is not None
        self.syncs_from.append(params["since"])
        items = [item for item in self.stored if item["seq"] > params["since"]]
        return {"items": items[: params["limit"]], "has_more": len(items) > params["limit"]}

    def _emit(self, method: str, params: Any, replayed: bool = False, replaces: bool = False) -> None:
        if method == "notification:new":
            self.delivered.append((params["id"], replayed))

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def settle(self) -> None:
        """Let the catch-ups started so far run: to the end while the worker answers, else one step."""
        if not self.answering:
            await asyncio.sleep(0)
            return
        while self._tasks:
            await self._tasks.pop(0)

    async def live(self, notification_id: str, seq: int | None, *, stored: bool = True) -> None:
        """A notification stored (unless ``stored`` is false: deleted at once) and its live frame."""
        if seq is not None:
            self.last_seq = seq
            if stored:
                self.stored.append({"id": notification_id, "seq": seq})
        self._on_notification("notification:new", {"id": notification_id, "seq": seq, "read_at": None})
        self.most_held = max(self.most_held, len(self.tracker._above_watermark))
        await self.settle()

    async def reconnect(self) -> None:
        if self._take_connected({"last_seq": self.last_seq, "unread_count": 0, "unseen_count": 0}):
            self._spawn(self._catch_up())
        await self.settle()


async def test_a_long_session_after_a_broadcast_is_not_replayed_by_the_next_reconnect() -> None:
    inbox = StoredInbox(last_seq=100)
    inbox.stored.append({"id": "broadcast", "seq": 101})  # the user's copy; its live frame has no seq
    await inbox.live("broadcast", None)
    live = range(102, 102 + REMEMBERED_IDS)
    for seq in live:
        await inbox.live(f"n{seq}", seq)
    await inbox.reconnect()
    assert inbox.delivered == [("broadcast", False)] + [(f"n{seq}", False) for seq in live]
    assert inbox.most_held <= HELD_SEQS
    assert inbox.watermark == live[-1]


async def test_a_sync_after_its_catch_ups_failed_for_a_long_session_delivers_only_what_was_missed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Disconnected when 101 was stored; the reconnect's catch-up fails (the worker does not answer) while
    # more frames arrive live above it than the client remembers ids of.
    caplog.set_level(logging.ERROR, "herald.client")  # not a warning per failed retry
    inbox = StoredInbox(last_seq=100)
    inbox.stored.append({"id": "missed", "seq": 101})
    inbox.last_seq = 101
    inbox.answering = False
    await inbox.reconnect()
    live = range(102, 102 + REMEMBERED_IDS)
    for seq in live:
        await inbox.live(f"n{seq}", seq)
    inbox.answering = True
    await inbox.settle()
    assert inbox.delivered == [(f"n{seq}", False) for seq in live] + [("missed", True)]
    assert inbox.watermark == live[-1]


async def test_a_gap_no_sync_can_pass_asks_for_one_catch_up_per_held_seqs() -> None:
    # A gap at 101 (a broadcast, say), and every item above it deleted before a sync could return it: no
    # sync passes the gap, so the held seqs keep growing; a catch-up per frame would be a sync per frame.
    inbox = StoredInbox(last_seq=100)
    for seq in range(102, 102 + 5 * HELD_SEQS):
        await inbox.live(f"n{seq}", seq, stored=False)
    assert inbox.syncs_from == [100] * 5
    assert len(inbox.delivered) == 5 * HELD_SEQS


def test_a_sync_items_seq_is_told_delivered_by_the_watermark_or_the_held_seqs() -> None:
    tracker = DeliveryTracker()
    tracker.advance(7)  # remembered while unanchored: delivered
    assert tracker.delivered_before(7)
    assert not tracker.delivered_before(3)
    tracker.anchor(4)
    tracker.advance(9)
    assert [seq for seq in range(1, 11) if tracker.delivered_before(seq)] == [1, 2, 3, 4, 7, 9]


def test_advance_asks_for_a_catch_up_at_each_multiple_of_the_held_seqs() -> None:
    tracker = DeliveryTracker()
    tracker.watermark = 0
    asked = [seq for seq in range(2, 2 + 2 * HELD_SEQS) if tracker.advance(seq)]
    assert asked == [1 + HELD_SEQS, 1 + 2 * HELD_SEQS]
    assert not tracker.advance(1 + HELD_SEQS)  # a repeat holds nothing more
    assert not tracker.advance(1)  # fills the gap: nothing is held
    assert tracker.watermark == 1 + 2 * HELD_SEQS
