"""Sans-I/O bookkeeping behind "nothing missed, nothing twice": the watermark and the delivered ids.

A notification is delivered once per *version*: a collapsed notification (PROTOCOL §10) comes back with
the same ``id`` and a higher ``seq``, and replaces the item the application shows. So the tracker keeps
each id's highest ``seq``: a repeat with that ``seq`` or a lower one (a redelivery, or a sync page that
overlaps live frames) is dropped; a higher ``seq`` is a replacement.

The watermark is the highest ``seq`` below which no notification can be missing. It advances over
contiguous ``seq`` values of live frames (a frame published out of order by a second worker leaves a gap
that holds it back) and jumps to the last item of each ``notifications.sync`` page, since a sync returns
every ``seq`` above ``since``. A gap that never fills live (a broadcast's own ``seq``: its live frame has
none, PROTOCOL amendment 36) holds every later ``seq``; once :data:`HELD_SEQS` are held, :meth:`advance`
asks for the sync that passes it. A replayed (sync) item is a repeat when its ``seq`` was delivered
(:meth:`delivered_before`), whether or not its id is still remembered.

A client whose first ``connected`` carried no ``last_seq`` (the worker did not answer the gateway in time)
has no watermark yet. It remembers the live ``seq`` values it sees (a bounded number) and takes the
watermark from the ``last_seq`` of its first ``notifications.unread_count`` reply (:meth:`anchor`, PROTOCOL
amendment 42): without one its next reconnect could not catch up what it missed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Literal

#: What :meth:`DeliveryTracker.deliver` makes of a notification.
Delivery = Literal["new", "replacement", "repeat"]

#: How many notification ids are remembered for de-duplication.
REMEMBERED_IDS: Final = 10_000

#: How many live ``seq`` values held above the watermark make :meth:`DeliveryTracker.advance` ask for a
#: catch-up (again at each further multiple): far fewer than :data:`REMEMBERED_IDS`, so the sync that passes
#: the gap finds every id it returns still remembered.
HELD_SEQS: Final = 1_000


class DeliveryTracker:
    """What a client has delivered: the watermark (``None`` until anchored: by the first ``connected``
    with a ``last_seq``, else by :meth:`anchor`) and recent ids."""

    def __init__(self, remembered: int = REMEMBERED_IDS) -> None:
        self.watermark: int | None = None
        self._remembered = remembered
        self._delivered: OrderedDict[str, int | None] = OrderedDict()  # id → highest seq delivered
        self._above_watermark: set[int] = set()

    def deliver(self, notification_id: str, seq: int | None) -> Delivery:
        """Record ``(notification_id, seq)``: ``"new"``, ``"replacement"`` (the id with a higher ``seq``:
        a collapsed notification's new version) or ``"repeat"`` (drop it). A ``seq`` of ``None`` (a live
        broadcast frame) is new only for an unknown id."""
        if notification_id in self._delivered:
            known = self._delivered[notification_id]
            if known is None and seq is not None:
                # A live broadcast frame (no seq), then its stored copy from a sync: one version.
                self._delivered[notification_id] = seq
                return "repeat"
            if seq is None or (known is not None and seq <= known):
                return "repeat"
            self._delivered[notification_id] = seq
            self._delivered.move_to_end(notification_id)
            return "replacement"
        self._delivered[notification_id] = seq
        if len(self._delivered) > self._remembered:
            self._delivered.popitem(last=False)
        return "new"

    def advance(self, seq: int) -> bool:
        """A notification with ``seq`` arrived (live or by a sync): move the watermark over a contiguous run.

        ``True`` when the client should catch up: ``seq`` is held above a gap and the held ``seq`` values
        reached a multiple of :data:`HELD_SEQS`. A sync passes the gap (:meth:`synced_up_to`), unless every
        item above it is gone (deleted or expired): asking again only per further :data:`HELD_SEQS`, not at
        every frame, keeps such a gap from setting off a sync per frame.

        Without a watermark the ``seq`` is only remembered (at most :data:`REMEMBERED_IDS` of them, so an
        unanchored client does not grow without limit) for :meth:`anchor`; its catch-up is under way."""
        mark = self.watermark
        if mark is None:
            if len(self._above_watermark) < self._remembered:
                self._above_watermark.add(seq)
            return False
        if seq <= mark or seq in self._above_watermark:
            return False
        self._above_watermark.add(seq)
        self._advance_from(mark)
        return seq in self._above_watermark and len(self._above_watermark) % HELD_SEQS == 0

    def delivered_before(self, seq: object) -> bool:
        """Whether a sync item's ``seq`` was delivered: at or below the watermark, or held.

        Ask before :meth:`advance`: a broadcast's copy moves the watermark over every ``seq`` held above it,
        and the ids of the items after it may be forgotten by then. Sound for sync items only: a sync returns
        ``seq`` values above ``since``, and the watermark passes only ``seq`` values delivered live or by a
        sync page; a live frame the gateway held back during the session lookup may be at or below a first
        session's watermark (``last_seq``) and still be new."""
        if not isinstance(seq, int):
            return False
        return seq in self._above_watermark or (self.watermark is not None and seq <= self.watermark)

    def anchor(self, last_seq: int) -> None:
        """Set the missing watermark from a reply's ``last_seq``; a no-op once there is one.

        Live frames seen before it keep it just below the lowest of them: what came between the session's
        start and that frame is unknown, and a sync from there recovers whatever was lost between it and
        ``last_seq`` without replaying older history (that is what ``notifications.list`` is for)."""
        if self.watermark is not None:
            return
        mark = min(last_seq, min(self._above_watermark) - 1) if self._above_watermark else last_seq
        self._above_watermark = {s for s in self._above_watermark if s > mark}
        self._advance_from(mark)

    def _advance_from(self, mark: int) -> None:
        """Make ``mark`` the watermark, moved over the contiguous run of seen ``seq`` values above it."""
        while mark + 1 in self._above_watermark:
            mark += 1
            self._above_watermark.discard(mark)
        self.watermark = mark

    def synced_up_to(self, last: int) -> None:
        """A sync page ended at ``last``: everything up to it is known now."""
        if self.watermark is not None and last > self.watermark:
            self.watermark = last
            self._above_watermark = {s for s in self._above_watermark if s > last}
