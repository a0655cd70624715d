"""Counts ordered against live frames, without I/O (the same as ``clients/js/lib/counts.js``).

Every count the server sends (``connected``, a request's result, a ``notification:*`` event) carries the
``last_seq`` it was read with (protocol amendment 51): it counts exactly the notifications stored up to
that ``seq``. Counts and live frames travel different ways (a reply, the user's exchange) and arrive in
either order, so "the last count wins, plus one per live frame" drifts: a reply read before a live frame
but received after it undoes the frame's +1, and an event held back while a session opened undoes
``connected``'s count. :class:`CountAnchor` orders them: a count read before the one shown is dropped as
stale, a live frame at or below the shown count's ``last_seq`` is in it already, and one above it that
was added is added again to every later count read before it was stored.
"""

from __future__ import annotations

from typing import Any, Final

#: Live frames remembered as added to the counts, newest kept: more than a count would ever lag behind.
ADDED_KEPT: Final = 1000


class CountAnchor:
    """The ``last_seq`` the shown counts were read with, and the live frames added to them since."""

    def __init__(self) -> None:
        #: ``last_seq`` of the counts shown; ``None`` when they came without one (or none came).
        self.counted_through: int | None = None
        self._added: dict[int, tuple[int, int]] = {}

    def reset(self) -> None:
        """A new session: its ``connected`` counts replace whatever was shown."""
        self.counted_through = None
        self._added.clear()

    def take(self, unread: Any, unseen: Any, last_seq: Any) -> tuple[Any, Any] | None:
        """The counts to show for counts read with ``last_seq``, or ``None`` when they are older than the
        ones shown. Without ``last_seq`` (an older server) they are taken as they are."""
        if not isinstance(last_seq, int):
            return unread, unseen
        if self.counted_through is not None and last_seq < self.counted_through:
            return None
        self.counted_through = last_seq
        self._added = {seq: deltas for seq, deltas in self._added.items() if seq > last_seq}
        if isinstance(unread, int):
            unread += sum(deltas[0] for deltas in self._added.values())
        if isinstance(unseen, int):
            unseen += sum(deltas[1] for deltas in self._added.values())
        return unread, unseen

    def counted(self, seq: Any) -> bool:
        """Whether a live frame's notification is in the shown counts already (stored at or below their
        ``last_seq``: amendment 43)."""
        return isinstance(seq, int) and self.counted_through is not None and seq <= self.counted_through

    def added(self, seq: int, unread: int, unseen: int) -> None:
        """A live frame at ``seq`` raised the shown counts by ``unread`` and ``unseen``."""
        self._added[seq] = (unread, unseen)
        if len(self._added) > ADDED_KEPT:
            del self._added[next(iter(self._added))]
