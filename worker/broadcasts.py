"""A broadcast in progress: stored chunk by chunk, beside the per-user batches.

The pipeline's broadcast loop stores the chunks (``broadcast_chunk_size`` known users in id order,
``worker.store.broadcasts``) one after the other on a connection of its own, while the batching loop goes
on: a per-user event waits for a chunk only when its batch locks a user the chunk holds. The delivery
stays unacked (held, ``worker.acks``) until the last chunk is committed and the one live frame is
confirmed; only then is it acked. Progress lives in memory only: a broadcast redelivered after a crash
starts again from the first user, and the idempotency key makes every chunk an earlier run committed
store nothing again. Its time is the earlier run's too: the first chunk that meets a copy that run stored
gives its ``created_at`` to the rest of the copies, their email/push jobs and the frame, so one broadcast
carries one ``created_at`` however often it was resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from shared.events import BroadcastEvent
from worker.broadcast_routing import broadcast_jobs
from worker.routing import Outgoing, route_broadcast
from worker.store.broadcasts import FIRST_USER_AFTER, store_chunk
from worker.store.deliveries import insert_waiting

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shared.preferences import Catalog
    from worker.acks import AckTracker
    from worker.pending import Pending
    from worker.routing import BroadcastRouting
    from worker.store.pool import Connection

    #: Stores a group of events in the transaction of the connection it is given, at the time given.
    Store = Callable[[Connection, list[Pending], datetime], Awaitable[Outgoing]]
    #: Commits a group with a :data:`Store`, resiliently: the groups committed (none: settled otherwise).
    Commit = Callable[[list[Pending], Store], Awaitable[list[tuple[list[Pending], Outgoing]]]]

log = structlog.get_logger("herald.worker")


@dataclass(frozen=True, slots=True)
class _Progress:
    after: str  # the last user id of the last committed chunk
    stored: int  # in-app copies stored so far
    chunks: int
    done: bool = False


@dataclass(slots=True)
class BroadcastRun:
    """One accepted broadcast and how far its chunks got."""

    item: Pending
    catalog: Catalog  # the one it was accepted with, which routed it
    routing: BroadcastRouting
    chunk_size: int
    progress: _Progress = field(default_factory=lambda: _Progress(FIRST_USER_AFTER, 0, 0))
    started: float = field(default_factory=time.perf_counter)
    # What the chunk in flight will have done once its transaction commits (a retried attempt replaces it).
    _attempt: _Progress | None = None

    @classmethod
    def start(cls, item: Pending, catalog: Catalog, chunk_size: int) -> BroadcastRun:
        """A run for ``item`` (a broadcast event), routed with the catalog it was accepted with."""
        if not isinstance(item.event, BroadcastEvent):
            raise TypeError("a broadcast run needs a broadcast event")
        return cls(item, catalog, route_broadcast(item.event, catalog, datetime.now(UTC)), chunk_size)

    @property
    def done(self) -> bool:
        """Whether the last chunk is committed."""
        return self.progress.done

    async def store_next_chunk(self, conn: Connection, catalog: Catalog) -> Outgoing:
        """Store the next chunk and its email/push jobs in ``conn``'s transaction.

        Returns what to publish: nothing until the last chunk (fewer users than a full chunk), then the
        broadcast's one frame and outcome. Call :meth:`committed` once the transaction has committed.
        """
        chunk = await store_chunk(conn, self.routing, self.progress.after, self.chunk_size)
        if chunk.created_at != self.routing.params["created_at"]:
            # The chunk met a copy an earlier run stored (this is a redelivery): the rest takes its time.
            # Kept even if this attempt rolls back, as that copy is committed.
            self.routing = route_broadcast(self.routing.event, self.catalog, chunk.created_at)
        await insert_waiting(conn, broadcast_jobs(self.routing, chunk.audience, catalog, chunk.created_at))
        last = len(chunk.audience) < self.chunk_size
        before = self.progress
        self._attempt = _Progress(
            chunk.last_user or before.after, before.stored + chunk.stored, before.chunks + 1, last
        )
        return self.routing.outgoing(chunk.stored) if last else Outgoing(rows=chunk.stored)

    def committed(self) -> None:
        """The chunk of the last :meth:`store_next_chunk` is committed: the next one starts after it."""
        if self._attempt is None:
            raise RuntimeError("no chunk was stored")
        self.progress, self._attempt = self._attempt, None
        if self.progress.done:
            log.info(
                "broadcast stored",
                event_id=self.routing.event.event_id,
                stored=self.progress.stored,
                chunks=self.progress.chunks,
                seconds=round(time.perf_counter() - self.started, 3),
            )


class Broadcasts:
    """The accepted broadcasts, oldest first; chunks are stored for the first one until it is done."""

    __slots__ = ("_acks", "_added", "_catalog", "_chunk_size", "_runs")

    def __init__(self, acks: AckTracker, catalog: Callable[[], Catalog], chunk_size: int) -> None:
        self._acks = acks
        self._catalog = catalog
        self._chunk_size = chunk_size
        self._runs: deque[BroadcastRun] = deque()
        self._added = asyncio.Event()

    def add(self, item: Pending) -> None:
        """Queue an accepted broadcast; its delivery is held (``worker.acks``) until it is settled.

        Routed first: if that raises, the delivery is not held and the caller settles it (a held delivery
        that no run settles would stay unacked until the channel closes, and come back every time).
        """
        run = BroadcastRun.start(item, self._catalog(), self._chunk_size)
        self._acks.hold(item.channel, item.tag)
        self._runs.append(run)
        self._added.set()

    def wake(self) -> None:
        """End a :meth:`next` that waits (the pipeline is stopping)."""
        self._added.set()

    async def next(self, stopping: Callable[[], bool]) -> bool:
        """Wait until a broadcast is queued; ``False`` once ``stopping()`` (checked again on :meth:`wake`)."""
        while not self._runs and not stopping():
            self._added.clear()
            await self._added.wait()
        return not stopping()

    def drop(self) -> None:
        """Forget every broadcast, unsettled (stopping): RabbitMQ redelivers them, and they resume."""
        for run in self._runs:
            log.info("broadcast left for redelivery", event_id=run.routing.event.event_id)
        self._runs.clear()

    async def store_next_chunk(self, commit: Commit) -> tuple[list[Pending], Outgoing] | None:
        """Commit the next chunk of the oldest broadcast; what to publish, and the delivery to ack after it
        once that was the last chunk. ``None``: the broadcast failed and ``commit`` settled it."""
        run = self._runs[0]

        async def store(conn: Connection, _items: list[Pending], _now: datetime) -> Outgoing:
            # A broadcast's copies carry its own time (the frame's), not the attempt's.
            return await run.store_next_chunk(conn, self._catalog())

        committed = await commit([run.item], store)
        if not committed:
            self._runs.popleft()
            return None
        run.committed()
        if not run.done:
            return [], committed[0][1]
        self._runs.popleft()
        return [run.item], committed[0][1]
