"""Wake-ups: ``LISTEN`` for the jobs that came due and wake the runner of their channel.

The statement that records jobs (the worker's, in the batch's transaction) sends ``NOTIFY`` with the job
channel when one of them is due now; Postgres delivers it at commit. The listener has a connection of its
own; when it is lost nothing is missed for long: the runners still poll every
``HERALD_DELIVERY_POLL_SECONDS``, and the listener reconnects at the same pace and then wakes every runner
once (a notification may have gone by while it was away).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from worker.store.deliveries import listen

if TYPE_CHECKING:
    from collections.abc import Mapping

    import asyncpg

    from worker.delivery.runner import ChannelRunner

log = structlog.get_logger("herald.delivery")


class Wakeup:
    """Keeps one listening connection open and hands its notifications to ``runners`` (by job channel)."""

    def __init__(self, dsn: str, runners: Mapping[str, ChannelRunner]) -> None:
        self._dsn = dsn
        self._runners = runners
        self._conn: asyncpg.Connection | None = None
        self._warned = False  # one warning per lost connection, not one per attempt

    def _woken(self, channel: str) -> None:
        runner = self._runners.get(channel)
        if runner is not None:
            runner.wake()

    async def keep_listening(self, interval: float) -> None:
        """(Re)connect whenever the connection is gone, checking every ``interval`` seconds; runs until
        cancelled."""
        while True:
            if self._conn is None or self._conn.is_closed():
                try:
                    self._conn = await listen(self._dsn, self._woken)
                except Exception as exc:  # polling covers the gap
                    if not self._warned:
                        log.warning("cannot listen for due jobs; polling only", error=repr(exc))
                        self._warned = True
                else:
                    self._warned = False
                    for runner in self._runners.values():
                        runner.wake()
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Close the listening connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
