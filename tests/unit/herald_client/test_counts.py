"""Counts and live frames arrive in either order, and the client's counts still match the server's.

Every count carries the ``last_seq`` it was read with (protocol amendment 51): the client drops a count
read before the one it shows and adds again the live notifications stored after a count was read. The
server is simulated by a running tally; the same cases run in clients/js/test/counts.test.mjs.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from herald_client.counts import ADDED_KEPT, CountAnchor
from herald_client.inbox import InboxView


class Server:
    """The user's counts as the worker keeps them: one per stored, unread, unseen notification."""

    def __init__(self, unread: int) -> None:
        self.last_seq = unread
        self.unread = unread

    def store(self) -> dict[str, Any]:
        """A new notification's live frame."""
        self.last_seq += 1
        self.unread += 1
        return {"id": f"n{self.last_seq}", "seq": self.last_seq, "read_at": None, "seen_at": None}

    def mark_read(self) -> dict[str, Any]:
        """One notification read: the result (and event) with the counts after it."""
        self.unread -= 1
        return {
            "updated": 1,
            "unread_count": self.unread,
            "unseen_count": self.unread,
            "last_seq": self.last_seq,
        }


class Inbox(InboxView):
    """The client's inbox logic, fed frames and results directly."""

    backoff_base = backoff_max = 0.0
    _closing = False

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.answer: dict[str, Any] = {}
        self._take_connected(
            {"last_seq": server.last_seq, "unread_count": server.unread, "unseen_count": server.unread}
        )

    async def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        assert method == "notifications.mark_read"
        return self.answer

    def _emit(self, method: str, params: Any, replayed: bool = False, replaces: bool = False) -> None:
        pass

    def _spawn(self, coro: Any) -> None:
        raise AssertionError("no recount or catch-up expected")

    def frame(self, params: dict[str, Any]) -> None:
        self._on_notification("notification:new", params)

    async def result(self, result: dict[str, Any]) -> None:
        """``result`` received as the answer of this client's own ``mark_read``."""
        self.answer = result
        await self.mark_read(["n1"])

    def event(self, method: str, params: dict[str, Any]) -> None:
        self._on_notification(method, params)


async def test_a_reply_read_before_a_live_frame_but_received_after_it_keeps_the_frame() -> None:
    server = Server(unread=5)
    inbox = Inbox(server)
    reply = server.mark_read()  # 4 unread, read before the next notification was stored
    inbox.frame(server.store())  # 5 unread: the frame arrives first
    await inbox.result(reply)
    assert (inbox.unread_count, inbox.unseen_count) == (server.unread, server.unread) == (5, 5)


async def test_a_frame_stored_before_a_reply_was_read_but_received_after_it_is_not_counted_twice() -> None:
    server = Server(unread=5)
    inbox = Inbox(server)
    frame = server.store()
    await inbox.result(server.mark_read())  # read after the notification was stored: it holds it
    inbox.frame(frame)
    assert inbox.unread_count == server.unread == 5


def test_an_event_held_back_while_the_session_opened_does_not_undo_connected() -> None:
    # The review's case: a read committed, then a notification stored, then the session's counts read;
    # the read's event and the frame were held back and are written right after `connected`.
    server = Server(unread=2)
    read_event = {"ids": ["n1"], **server.mark_read()}
    frame = server.store()
    inbox = Inbox(server)  # connected: 2 unread, last_seq 3
    inbox.event("notification:read", read_event)
    inbox.frame(frame)
    assert inbox.unread_count == server.unread == 2


@pytest.mark.parametrize("trial", range(200))
async def test_any_order_of_replies_and_frames_ends_at_the_servers_counts(trial: int) -> None:
    rng = random.Random(trial)
    server = Server(unread=20)
    inbox = Inbox(server)
    in_flight: list[tuple[str, dict[str, Any]]] = []
    for _ in range(30):
        in_flight.append(("frame", server.store()) if rng.random() < 0.5 else ("result", server.mark_read()))
    # Frames keep their order on the user's exchange; replies overtake them or fall behind.
    frames = [entry for entry in in_flight if entry[0] == "frame"]
    results = [entry for entry in in_flight if entry[0] == "result"]
    while frames or results:
        source = frames if frames and (not results or rng.random() < 0.5) else results
        kind, params = source.pop(0)
        if kind == "frame":
            inbox.frame(params)
        else:
            await inbox.result(params)
    assert (inbox.unread_count, inbox.unseen_count) == (server.unread, server.unread)


def test_counts_without_last_seq_are_taken_as_they_are() -> None:
    anchor = CountAnchor()
    assert anchor.take(3, 2, None) == (3, 2)
    assert anchor.take(7, 7, 10) == (7, 7)
    assert anchor.take(1, 1, None) == (1, 1)  # an older server: last one wins


def test_only_the_newest_added_frames_are_remembered() -> None:
    anchor = CountAnchor()
    assert anchor.take(0, 0, 0) == (0, 0)
    for seq in range(1, ADDED_KEPT + 11):
        anchor.added(seq, 1, 1)
    assert anchor.take(0, 0, 0) == (ADDED_KEPT, ADDED_KEPT)
    assert anchor.counted(0)
    assert not anchor.counted(1)
    assert anchor.take(5, 5, -1) is None  # read before the counts shown
