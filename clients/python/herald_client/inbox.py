"""The client's view of the user's inbox: the counts, each delivery once, and the catch-up after a gap.

Mixed into :class:`~herald_client.HeraldClient`, which supplies the connection (:meth:`request`, the event
stream, tasks). Semantics (the same as ``clients/js/herald.js``):

- **Nothing missed, nothing twice**: after a reconnect, or on ``sync:required``, the client calls
  ``notifications.sync`` from its *watermark* and pages while ``has_more``; notifications it already
  delivered are dropped by ``seq`` (at or below the watermark, or held above it) and by ``id``. The
  watermark is the highest ``seq`` below which no notification can be missing: it advances over contiguous
  ``seq`` values of live frames and to the last item of each sync page, so a frame published out of order
  by a second worker just before a disconnect is not skipped.
  Live ``seq`` values held above a gap that never fills live (a broadcast's own ``seq``) start a catch-up
  once there are :data:`~herald_client.tracking.HELD_SEQS` of them.
  A first ``connected`` without ``last_seq`` (the worker did not answer the gateway in time) leaves no
  watermark: the client then anchors it from the ``last_seq`` of a ``notifications.unread_count`` reply,
  which it fetches at once, retried until the worker answers, so its next reconnect can still catch up.
  A failed catch-up is retried with backoff until it succeeds.
- **unread_count** and **unseen_count** (the bell's badge, PROTOCOL §10) follow ``connected``,
  ``notification:*`` frames and request results, ordered by the ``last_seq`` each was read with
  (:class:`~herald_client.counts.CountAnchor`, amendments 43 and 51).
- **Collapsed notifications** come back with the same ``id`` and a higher ``seq``: they are delivered
  again as ``notification:new`` with ``Event.replaces`` true (replace the item, do not add it), and the
  counts are fetched again (the client cannot tell whether the replaced item had been seen). A repeat
  with a ``seq`` already delivered is dropped.
- The counts are fetched again, not guessed, for the other frames the client cannot tell are in them
  already: a collapse (``count`` > 1) into an item this client never delivered (stored before it connected:
  PROTOCOL amendment 12, a collapse targets an unread item, so the unread count does not move), and a live
  broadcast frame (``seq`` null), whose stored copy may be in ``connected``'s counts (amendment 36: the
  copies are stored before the frame goes out).
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Final

from herald_client.counts import CountAnchor
from herald_client.errors import HeraldError
from herald_client.methods import InboxMethods
from herald_client.reconnect import backoff_delay
from herald_client.tracking import DeliveryTracker

if TYPE_CHECKING:
    from collections.abc import Awaitable

log = logging.getLogger("herald.client")

#: Items asked for per ``notifications.sync`` page of a catch-up (the server's maximum).
SYNC_PAGE: Final = 500


def _collapsed(item: dict[str, Any]) -> bool:
    """Whether ``item`` is a collapsed notification's later version (events collapsed into it)."""
    count = item.get("count")
    return isinstance(count, int) and count > 1


class InboxView(InboxMethods):
    """Counts, de-duplicated delivery and catch-up, over the connection's requests and events."""

    # Set by the connection (HeraldClient).
    backoff_base: float
    backoff_max: float
    _closing: bool

    def __init__(self) -> None:
        #: The user's unread count as last reported or derived; ``None`` until known.
        self.unread_count: int | None = None
        #: The user's unseen count (the badge) as last reported or derived; ``None`` until known.
        self.unseen_count: int | None = None
        self.tracker = DeliveryTracker()
        #: Orders the counts against live frames by the ``last_seq`` they were read with (amendments 43, 51).
        self._counts = CountAnchor()
        self._sync_lock = asyncio.Lock()
        self._recount: asyncio.Task[None] | None = None
        self._recount_again = False

    @abstractmethod
    def _emit(self, method: str, params: Any, replayed: bool = False, replaces: bool = False) -> None:
        """Emit one event to the client's listeners and iterators."""

    @abstractmethod
    def _spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` as a task that ends when the client stops."""

    @property
    def watermark(self) -> int | None:
        """Highest ``seq`` below which nothing can be missing (``None`` until anchored by a ``last_seq``
        from ``connected`` or, when that had none, from ``notifications.unread_count``)."""
        return self.tracker.watermark

    @watermark.setter
    def watermark(self, value: int | None) -> None:
        self.tracker.watermark = value

    def _take_counts(self, unread: Any, unseen: Any, last_seq: Any) -> None:
        taken = self._counts.take(unread, unseen, last_seq)
        if taken is not None:  # else read before the counts shown: a late reply or event
            self._set_unread(taken[0])
            self._set_unseen(taken[1])

    def _set_unread(self, count: Any) -> None:
        if isinstance(count, int) and count != self.unread_count:
            self.unread_count = count
            self._emit("unread", {"count": count})

    def _set_unseen(self, count: Any) -> None:
        if isinstance(count, int) and count != self.unseen_count:
            self.unseen_count = count
            self._emit("unseen", {"count": count})

    def _anchor(self, last_seq: Any) -> None:
        """Take a count's ``last_seq``: it anchors a missing watermark."""
        if isinstance(last_seq, int):
            self.tracker.anchor(last_seq)  # a no-op once there is a watermark

    def _take_connected(self, params: dict[str, Any]) -> bool:
        """Take the counts and ``last_seq`` of ``connected``; ``True`` when a catch-up must follow."""
        server_seq = params.get("last_seq")
        resume_from = self.watermark
        # First session: history is what notifications.list is for; live starts now. Live frames seen by an
        # earlier session that never got a last_seq keep the watermark below them (anchor).
        self._anchor(server_seq)
        self._counts.reset()  # a session's counts replace the last one's, whatever they were read with
        self._take_counts(params.get("unread_count"), params.get("unseen_count"), server_seq)
        if resume_from is not None:
            return not isinstance(server_seq, int) or server_seq > resume_from
        # No last_seq: the catch-up anchors the watermark with notifications.unread_count. Anchored below
        # last_seq: live frames were seen while unanchored, so some may be missing.
        mark = self.watermark
        return mark is None or (isinstance(server_seq, int) and mark < server_seq)

    def _on_notification(self, method: str, params: Any) -> None:
        if method == "notification:new" and isinstance(params, dict):
            self._deliver(params, replayed=False)
            return
        if isinstance(params, dict) and method.startswith("notification:"):
            self._take_counts(params.get("unread_count"), params.get("unseen_count"), params.get("last_seq"))
        self._emit(method, params)
        if method == "sync:required":
            self._spawn(self._catch_up())

    def _deliver(self, item: dict[str, Any], replayed: bool) -> None:
        """Emit a notification unless this version was delivered already; advance the watermark."""
        seq = item.get("seq")
        if isinstance(seq, int) and self.tracker.advance(seq):
            self._spawn(self._catch_up())  # the held seqs reached another HELD_SEQS: a sync passes their gap
        delivery = self.tracker.deliver(str(item.get("id")), seq if isinstance(seq, int) else None)
        if delivery == "repeat":
            return
        # Replayed items are counted by the unread_count fetch that ends every catch-up.
        if delivery == "replacement" and not replayed:
            self._spawn(self._recount_soon())
        elif not replayed and not self._counts.counted(seq):
            if not isinstance(seq, int) or _collapsed(item):
                # The counts may hold it already: fetch them rather than add one (see the module's docstring).
                self._spawn(self._recount_soon())
            else:
                unread = unseen = 0
                if item.get("read_at") is None and self.unread_count is not None:
                    self._set_unread(self.unread_count + 1)
                    unread = 1
                if item.get("seen_at") is None and self.unseen_count is not None:
                    self._set_unseen(self.unseen_count + 1)
                    unseen = 1
                self._counts.added(seq, unread, unseen)
        self._emit("notification:new", item, replayed, delivery == "replacement")

    async def _recount_soon(self) -> None:
        """Fetch the counts again; replacements arriving meanwhile are covered by one more fetch."""
        if self._recount is not None and not self._recount.done():
            self._recount_again = True
            return
        self._recount = asyncio.current_task()
        try:
            self._recount_again = True
            while self._recount_again:
                self._recount_again = False
                await self.fetch_unread_count()
        except HeraldError as exc:
            log.warning("herald client: count refresh failed: %s", exc)
        finally:
            self._recount = None

    async def _catch_up(self) -> None:
        """Page ``notifications.sync`` from the watermark while ``has_more``, then refresh the count
        (without a watermark, fetch the count first: its ``last_seq`` anchors the watermark).

        A failed sync (e.g. 5003 while the worker reconnects) is retried with backoff until it succeeds
        or the client closes: the notifications it would recover are otherwise only seen at the next
        reconnect.
        """
        async with self._sync_lock:
            failures = 0
            while not self._closing and not await self._catch_up_once():
                delay = backoff_delay(failures, self.backoff_base, self.backoff_max)
                failures += 1
                log.warning("herald client: sync failed; retrying in %.2fs", delay)
                await asyncio.sleep(delay)

    async def _catch_up_once(self) -> bool:
        """One catch-up; ``False`` when a request failed (the watermark then has not moved past it).

        Without a watermark (``connected`` had no ``last_seq``) it first fetches the counts, whose
        ``last_seq`` anchors it; that fetch failing (5003 while the worker is down) is retried as a sync is.
        """
        try:
            counted = recovered = False
            if self.watermark is None:
                await self.fetch_unread_count()
                counted = True
            while self.watermark is not None:
                page = await self.sync(self.watermark, SYNC_PAGE)
                items = page.get("items") or []
                recovered = recovered or bool(items)
                for item in items:
                    # By seq, before _deliver() passes the held seqs: a long session's first ids are gone.
                    if not self.tracker.delivered_before(item.get("seq")):
                        self._deliver(item, replayed=True)
                if items:
                    last = items[-1].get("seq")
                    if isinstance(last, int):
                        self.tracker.synced_up_to(last)
                if not page.get("has_more") or not items:
                    break
            # Re-anchor the count: it covers what the sync recovered and any frame counted twice
            # between ``connected`` and the sync (the leading fetch did, if the sync found nothing).
            if not counted or recovered:
                await self.fetch_unread_count()
        except HeraldError as exc:
            log.warning("herald client: sync failed: %s", exc)
            return False
        return True
