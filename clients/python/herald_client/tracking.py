"""Sans-I/O bookkeeping behind "nothing missed, nothing twice": the watermark and the delivered ids.

The watermark is the highest ``seq`` below which no notification can be missing. It advances over
contiguous ``seq`` values of live frames (a frame published out of order by a second worker leaves a gap
that holds it back) and jumps to the last item of each ``notifications.sync`` page, since a sync returns
every ``seq`` above ``since``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

#: How many notification ids are remembered for de-duplication.
REMEMBERED_IDS: Final = 10_000


class DeliveryTracker:
    """What a client has delivered: the watermark (``None`` until the first ``connected``) and recent ids."""

    def __init__(self, remembered: int = REMEMBERED_IDS) -> None:
        self.watermark: int | None = None
        self._remembered = remembered
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._above_watermark: set[int] = set()

    def first_delivery(self, notification_id: str) -> bool:
        """Record ``notification_id``; ``False`` when it was delivered already (drop the repeat)."""
        if notification_id in self._delivered:
            return False
        self._delivered[notification_id] = None
        if len(self._delivered) > self._remembered:
            self._delivered.popitem(last=False)
        return True

    def advance(self, seq: int) -> None:
        """A live frame with ``seq`` arrived: move the watermark over any now-contiguous run."""
        mark = self.watermark
        if mark is None or seq <= mark:
            return
        self._above_watermark.add(seq)
        while mark + 1 in self._above_watermark:
            mark += 1
            self._above_watermark.discard(mark)
        self.watermark = mark

    def synced_up_to(self, last: int) -> None:
        """A sync page ended at ``last``: everything up to it is known now."""
        if self.watermark is not None and last > self.watermark:
            self.watermark = last
            self._above_watermark = {s for s in self._above_watermark if s > last}
