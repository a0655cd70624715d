"""The event pipeline: validate, micro-batch, store, publish, ack.

Life of an event (docs/design.md has the reasons):

1. :meth:`Pipeline.accept` (called by :class:`worker.events.EventConsumer`) parses the body with
   :func:`shared.events.parse_event` and checks the type against the in-memory catalog (an unknown type
   first reloads the catalog, at most every 5 s, so a type an operator just added is accepted). An invalid
   event is copied to ``herald.dlx`` with its ``x-herald-error`` reason and acked, at once; it never enters
   a batch. A ``user.profile`` event is stored by :mod:`worker.profiles`, a user's in turn, and acked.
2. Valid events wait in the batcher until ``batch_size`` are pending or ``batch_timeout_ms`` passed. One
   batch of sends is one transaction: users rows ensured and locked in id order, preferences read with the
   lock, duplicates (same user and idempotency key) read back, the rest inserted by one multi-row statement
   (:mod:`worker.store.events`); :mod:`worker.routing` decides in between who gets what, on which channel.
   The email/push jobs of what was stored are recorded in ``delivery_jobs`` by one more statement in the
   same transaction (an outbox: ``herald-delivery`` is woken by ``NOTIFY`` at commit and sends them).
   A broadcast is stored chunk by chunk, one short transaction each, by a loop of its own beside the
   batches (:mod:`worker.broadcasts`).
3. After the commit, every frame of the batch is published (broadcast frames with confirms in flight
   together); then the batch's AMQP deliveries are acked (:class:`worker.acks.AckTracker`). Publishing
   overlaps with the next batch's commit; acks happen only after both commit and confirms.

Failures: deadlocks and serialization failures retry the batch at once; an outage
(:func:`worker.store.pool.is_outage`) keeps the batch unacked and retries it with capped exponential
backoff — the broker stops delivering once ``prefetch`` events are unacked, so the worker takes nothing
more until the database is back; any other error splits the batch in halves until the one event that
causes it is found, which is dead-lettered (a database error about its data) or requeued (a bug; the
queue's delivery limit dead-letters it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import structlog

from shared.events import BroadcastEvent, InvalidEvent, ProfileEvent, SendEvent, parse_event
from worker import metrics
from worker.broadcasts import Broadcasts
from worker.catalog_check import CatalogCheck
from worker.frames import UNDECODABLE_REASON, undecodable
from worker.pending import Pending, tags_by_channel, take_batch
from worker.profiles import ProfileTurns, store_profile
from worker.routing import NEW_METHOD, Outgoing, SendRouting
from worker.store import events as store
from worker.store.deliveries import record
from worker.store.pool import OUTAGE_BACKOFF_MAX, OUTAGE_BACKOFF_START, is_outage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from aiormq.abc import AbstractChannel, DeliveredMessage

    from shared.preferences import Catalog
    from shared.settings import Settings
    from worker.acks import AckTracker
    from worker.broadcasts import Store
    from worker.publish import Publisher
    from worker.store.pool import Connection

log = structlog.get_logger("herald.worker")

_CONFLICT_ERRORS: Final = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    # Two workers inserting the same (user, key) at once: the retry sees the winner's row.
    asyncpg.UniqueViolationError,
    store.UsersRaced,
)
#: Retries of a batch whose statement Postgres canceled (57014, e.g. ``statement_timeout``). A cancel can
#: be load (retry) or the batch itself, such as a broadcast to a huge user base that always exceeds the
#: timeout: after this many it is treated like a data error (bisected, then dead-lettered), not forever.
QUERY_CANCELED_RETRIES: Final = 3
_MAX_PUBLISHING_BATCHES: Final = 4


class _Shutdown(Exception):
    """The worker is stopping while the database is down: leave the batch to a redelivery."""


class Pipeline:
    """Accepts events from the consumer, batches, stores, publishes and acks them."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        publisher: Publisher,
        acks: AckTracker,
        catalog: Callable[[], Catalog],
        reload_catalog: Callable[[], Awaitable[object]],
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._acks = acks
        self._catalog = catalog
        self._types = CatalogCheck(catalog, reload_catalog)
        self._batch_size = settings.batch_size
        self._batch_timeout = settings.batch_timeout_ms / 1000
        self._pending: list[Pending] = []
        self._broadcasts = Broadcasts(acks, catalog, settings.broadcast_chunk_size)
        self._profiles = ProfileTurns()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._publishing: set[asyncio.Task[None]] = set()
        self._publish_slots = asyncio.Semaphore(_MAX_PUBLISHING_BATCHES)
        self._runner: asyncio.Task[None] | None = None
        self._broadcaster: asyncio.Task[None] | None = None
        self.database_up = True

    # -- intake ---------------------------------------------------------------------------------------

    def accept(self, message: DeliveredMessage) -> Coroutine[Any, Any, None] | None:
        """Validate one delivery and queue it for a batch; never raises for bad input.

        A valid send or broadcast of a known type is queued at once, in the consumer's callback, and
        ``None`` is returned. Whatever needs I/O first is returned as a coroutine for the caller to run: a
        dead-lettering, a ``user.profile`` event (stored in turn, then acked), an unknown type (the catalog
        is reloaded in case an operator just added it).
        """
        try:
            channel = message.channel
        except RuntimeError:
            return None  # its channel closed meanwhile: RabbitMQ redelivers it
        if undecodable(message.header.properties.headers):
            return self.dead_letter(message, channel, UNDECODABLE_REASON)
        try:
            event = parse_event(message.body, message.routing_key, message.header.properties.message_id)
        except InvalidEvent as exc:
            return self.dead_letter(message, channel, exc.reason)
        except Exception:  # a bug; left unsettled, the delivery would stop every later ack
            log.exception("event could not be parsed; requeued")
            return self._requeue_one(message, channel)
        if isinstance(event, ProfileEvent):  # held from the upsert until settled, in delivery order
            return self._profiles.run(event.user_id, lambda: self._accept_after_io(message, channel, event))
        if event.type not in self._catalog():
            return self._accept_after_io(message, channel, event)
        return self._enqueue(message, channel, event)

    async def _accept_after_io(
        self,
        message: DeliveredMessage,
        channel: AbstractChannel,
        event: SendEvent | BroadcastEvent | ProfileEvent,
    ) -> None:
        try:
            if isinstance(event, ProfileEvent):
                await store_profile(self._pool, event)  # contact data skips the batcher
            elif not await self._types.has(event.type):
                raise InvalidEvent(f"type: unknown notification type {event.type!r}")
        except InvalidEvent as exc:
            await self.dead_letter(message, channel, exc.reason)
            return
        except Exception:
            # E.g. the catalog reload for an unknown type hit a database outage. A delivery left
            # unsettled would stop every later ack (acks go out in contiguous runs), so hand it back;
            # x-delivery-limit dead-letters one that keeps failing.
            log.exception("event could not be validated; requeued")
            await self._requeue_one(message, channel)
            return
        if isinstance(event, ProfileEvent):
            await self._acks.settle(channel, (message.delivery_tag or 0,))
        elif (refused := self._enqueue(message, channel, event)) is not None:
            await refused

    def _enqueue(
        self, message: DeliveredMessage, channel: AbstractChannel, event: SendEvent | BroadcastEvent
    ) -> Coroutine[Any, Any, None] | None:
        """Queue a valid event; returns the dead-lettering of a broadcast that cannot be routed, to run."""
        if self._closing:
            return None  # stopping: left unacked, requeued when the channel closes
        item = Pending(event, message, channel, message.delivery_tag or 0)
        if isinstance(event, BroadcastEvent):
            try:
                self._broadcasts.add(item)
            except Exception as exc:
                # Routing depends on the event and the catalog alone: it would fail at every redelivery.
                log.exception(
                    "broadcast could not be routed", message_id=message.header.properties.message_id
                )
                return self.dead_letter(message, channel, f"route: {type(exc).__name__}: {exc}")
            return None
        self._pending.append(item)
        if len(self._pending) == 1:
            self._wake.set()
        if len(self._pending) >= self._batch_size:
            self._full.set()
        return None

    async def dead_letter(self, message: DeliveredMessage, channel: AbstractChannel, reason: str) -> None:
        """Publish ``message`` to ``herald.dlx`` with ``reason`` (confirmed), then ack it.

        If the copy cannot be published the delivery is requeued instead, never left hanging unacked.
        """
        tag = message.delivery_tag or 0
        message_id = message.header.properties.message_id
        try:
            await self._publisher.dead_letter(message, reason)
        except Exception as exc:
            log.warning("dead-lettering failed; requeued", error=repr(exc), message_id=message_id)
            await self._requeue_one(message, channel)
            return
        metrics.EVENTS.labels("dead_lettered").inc()
        log.info("event dead-lettered", reason=reason, message_id=message_id)
        await self._acks.settle(channel, (tag,))

    # -- batching -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching loop and the broadcast loop (call once, from the running event loop)."""
        self._runner = asyncio.create_task(self._run(), name="herald-batcher")
        self._broadcaster = asyncio.create_task(self._run_broadcasts(), name="herald-broadcasts")

    async def close(self) -> None:
        """Flush what is pending, wait for its publishes and acks, and stop the loop.

        Call after the consumer was cancelled. If the database is down the pending events are left unacked:
        RabbitMQ requeues them when the channel closes.
        """
        self._closing = True
        self._wake.set()
        self._full.set()
        self._broadcasts.wake()
        for loop in (self._runner, self._broadcaster):
            if loop is not None:
                await loop
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < self._batch_size and not self._closing and self._batch_timeout > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._batch_timeout):
                        await self._full.wait()
            batch = take_batch(self._pending, self._batch_size)
            try:
                await self._process(batch)
            except _Shutdown:
                self._pending.clear()
                return
            except Exception:  # a bug: keep the loop alive; the batch is redelivered by the broker
                log.exception("batch failed")
                await self._requeue(batch)

    async def _run_broadcasts(self) -> None:
        """Store the accepted broadcasts one after the other, chunk by chunk, beside the batches."""
        while await self._broadcasts.next(lambda: self._closing):
            started = time.perf_counter()
            try:
                stored = await self._broadcasts.store_next_chunk(self._commit_resilient)
            except _Shutdown:
                break
            if stored is not None:
                await self._committed(started, *stored)
        self._broadcasts.drop()  # stopping: left unacked, redelivered when the channel closes, resumed

    async def _process(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        committed: list[Pending] = []
        outgoing = Outgoing()
        for items, out in await self._commit_resilient(batch, self._store_sends):
            committed += items
            outgoing.extend(out)
        metrics.BATCH_SIZE.observe(len(batch))
        await self._committed(started, committed, outgoing)

    async def _committed(self, started: float, items: list[Pending], outgoing: Outgoing) -> None:
        """Count what was stored since ``started``; publish ``outgoing`` and then ack ``items``, in a task."""
        metrics.STORE_SECONDS.observe(time.perf_counter() - started)
        metrics.NOTIFICATIONS.inc(outgoing.rows)
        for outcome, count in outgoing.outcomes.items():
            metrics.EVENTS.labels(outcome).inc(count)
        for channel, count in outgoing.delivery_counts().items():
            metrics.DELIVERIES.labels(channel).inc(count)
        if not items:
            return
        await self._publish_slots.acquire()
        task = asyncio.create_task(self._publish_and_ack(items, outgoing))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _commit_resilient(
        self, items: list[Pending], store: Store
    ) -> list[tuple[list[Pending], Outgoing]]:
        """Commit ``items`` with ``store``; returns the committed groups (a poison event is settled alone)."""
        delay = OUTAGE_BACKOFF_START
        conflicts = canceled = 0
        while True:
            try:
                outgoing = await self._commit(items, store)
            except _CONFLICT_ERRORS:
                conflicts += 1
                metrics.DB_RETRIES.labels("conflict").inc()
                await asyncio.sleep(random.uniform(0, 0.01 * min(conflicts, 10)))
                continue
            except Exception as exc:
                if isinstance(exc, asyncpg.QueryCanceledError):
                    canceled += 1
                if is_outage(exc) and canceled <= QUERY_CANCELED_RETRIES:
                    self._set_database_up(False, exc)
                    metrics.DB_RETRIES.labels("outage").inc()
                    if self._closing:
                        raise _Shutdown from exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, OUTAGE_BACKOFF_MAX)
                    continue
                if len(items) == 1:
                    await self._poison(items[0], exc)
                    return []
                middle = len(items) // 2
                return await self._commit_resilient(items[:middle], store) + await self._commit_resilient(
                    items[middle:], store
                )
            self._set_database_up(True)
            return [(items, outgoing)]

    def _set_database_up(self, up: bool, error: BaseException | None = None) -> None:
        if up != self.database_up:
            if up:
                log.info("database is back; resuming")
            else:
                log.warning("database unavailable; holding events unacked", error=repr(error))
        self.database_up = up
        metrics.DB_UP.set(1 if up else 0)

    async def _poison(self, item: Pending, exc: Exception) -> None:
        if isinstance(exc, asyncpg.PostgresError):
            # The database refused this event's data (e.g. a NUL character in a text field).
            await self.dead_letter(item.message, item.channel, f"store: {exc.__class__.__name__}: {exc}")
            return
        log.error(
            "event failed; requeued", message_id=item.message.header.properties.message_id, exc_info=exc
        )
        await self._requeue([item])

    async def _requeue_one(self, message: DeliveredMessage, channel: AbstractChannel) -> None:
        metrics.EVENTS.labels("requeued").inc()
        await self._acks.requeue(channel, [message.delivery_tag or 0])

    async def _requeue(self, items: list[Pending]) -> None:
        metrics.EVENTS.labels("requeued").inc(len(items))
        for channel, tags in tags_by_channel(items).items():
            await self._acks.requeue(channel, tags)

    # -- storing --------------------------------------------------------------------------------------

    async def _commit(self, items: list[Pending], store: Store) -> Outgoing:
        # Taken before BEGIN, so never later than the transaction's now(): a job due "now" is recorded due
        # at the transaction's time, and each retry of a batch routes at its own time.
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            return await store(conn, items, now)

    async def _store_sends(self, conn: Connection, items: list[Pending], now: datetime) -> Outgoing:
        batch = [item.event for item in items if isinstance(item.event, SendEvent)]
        overrides = await store.lock_users(conn, list({u for event in batch for u in event.user_ids}))
        routing = SendRouting(batch, overrides, self._catalog(), now)
        stored = await store.existing(conn, routing.keyed())
        writes = routing.writes(stored, await store.collapse_targets(conn, routing.collapsible()))
        outgoing = routing.outgoing(await store.write(conn, writes))
        await record(conn, outgoing.deliveries)
        return outgoing

    # -- publishing -----------------------------------------------------------------------------------

    async def _publish_and_ack(self, items: list[Pending], outgoing: Outgoing) -> None:
        try:
            started = time.perf_counter()
            try:
                await self._publisher.batch_frames(NEW_METHOD, outgoing.frames, outgoing.broadcasts)
            except Exception as exc:
                # Not acked: redelivered, found stored, published again.
                log.warning("publish failed; batch requeued", error=repr(exc), events=len(items))
                await self._requeue(items)
                return
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
            for amqp_channel, tags in tags_by_channel(items).items():
                await self._acks.settle(amqp_channel, tags)
        finally:
            self._publish_slots.release()
