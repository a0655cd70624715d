"""One channel's job loop: take jobs from the queue and from Postgres, send them, record each outcome.

A job message from ``herald.deliveries.<channel>`` is recorded in ``delivery_jobs`` first (once: a
redelivery changes nothing; a higher version of a collapsed notification replaces its key's waiting row,
docs/protocol.md amendment 25). A job due now is inserted already claimed and sent at once, and its message
is acked only after the outcome is written, so the queue's prefetch bounds the jobs in flight. A job that
must wait (quiet hours, a catalog delay, a retry's backoff) is acked once recorded and later claimed by
:meth:`ChannelRunner.poll_forever` — in any ``herald-delivery`` process — when it comes due.

Exactly-once in normal operation: a job is sent only by the holder of its lease, whose outcome write
releases it; a process killed after the server accepted a message but before that write leaves its lease
to expire, and only such in-flight jobs are sent again (docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Final, TypeVar

import orjson
import structlog

from shared.topology import ERROR_HEADER
from worker.delivery import metrics
from worker.delivery.jobs import InvalidJob, Outcome, parse_job, retry_delay, settle
from worker.store import deliveries
from worker.store.deliveries import Claimed
from worker.store.pool import is_outage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg
    from aio_pika.abc import AbstractIncomingMessage
    from aiolimiter import AsyncLimiter
    from faststream.rabbit import RabbitBroker

    from worker.delivery.senders.base import Sender
    from worker.delivery.settings import DeliverySettings

log = structlog.get_logger("herald.delivery")

T = TypeVar("T")
_OUTAGE_BACKOFF_START: Final = 0.2
_OUTAGE_BACKOFF_MAX: Final = 5.0


class ChannelRunner:
    """Sends the jobs of one channel with its :class:`Sender`, at most ``rate`` per second."""

    def __init__(
        self,
        *,
        sender: Sender,
        settings: DeliverySettings,
        pool: asyncpg.Pool,
        broker: RabbitBroker,
        dead_queue: str,
        limiter: AsyncLimiter,
        concurrency: int,
    ) -> None:
        self.channel = sender.channel
        self._sender = sender
        self._settings = settings
        self._pool = pool
        self._broker = broker
        self._dead_queue = dead_queue
        self._limiter = limiter
        self._concurrency = concurrency
        self._stopping = asyncio.Event()

    async def _with_database(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying through a database outage (the job waits, nothing is lost)."""
        delay = _OUTAGE_BACKOFF_START
        while True:
            try:
                return await operation()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                log.warning("database unavailable; delivery waits", channel=self.channel, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _OUTAGE_BACKOFF_MAX)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """Record one job message, send it when it is due, then ack it."""
        try:
            job_id, job = parse_job(message.body, message.message_id)
            if job.channel != self.channel:
                raise InvalidJob(f"channel: a {job.channel} job in the {self.channel} queue")
        except InvalidJob as exc:
            await self._dead_letter(message.message_id or "", message.body, str(exc))
            await message.ack()
            return
        lease = self._settings.delivery_lease_seconds
        claimed: Claimed | None
        if await self._with_database(lambda: deliveries.schedule(self._pool, job_id, job, lease)):
            notification = job.notification.model_dump(mode="json")
            claimed = Claimed(
                job_id,
                job.user_id,
                job.channel,
                notification,
                attempts=1,
                cancelled=False,
                version=deliveries.stored_version(job),
            )
        else:  # recorded before (a redelivery, a job still waiting) or it replaced a waiting row's version;
            # send it only if due and unclaimed
            claimed = await self._with_database(lambda: deliveries.claim_one(self._pool, job_id, lease))
        if claimed is not None:
            await self.run(claimed)
        await message.ack()

    async def run(self, job: Claimed) -> None:
        """Attempt one claimed job and record the outcome (a cancelled one is only counted)."""
        if job.cancelled:
            metrics.DELIVERIES.labels(self.channel, "cancelled").inc()
            return
        async with self._limiter:
            started = time.perf_counter()
            try:
                outcome = await self._sender.send(job)
            except Exception as exc:  # a sender bug must not lose the job: retried like a transient failure
                log.exception("sender failed", channel=self.channel, job_id=job.id)
                outcome = Outcome.transient(f"sender error: {exc!r}")
            metrics.SEND_SECONDS.labels(self.channel).observe(time.perf_counter() - started)
        final = settle(outcome, job.attempts, self._settings.delivery_max_attempts)
        await self._with_database(lambda: self._record(job, final))
        metrics.DELIVERIES.labels(self.channel, final.status).inc()
        if final.status == "failed":
            log.warning("delivery failed", channel=self.channel, job_id=job.id, error=final.error)
            body = orjson.dumps(
                {
                    "id": job.id,
                    "user_id": job.user_id,
                    "channel": job.channel,
                    "attempts": job.attempts,
                    "notification": job.notification,
                }
            )
            await self._dead_letter(job.id, body, final.error or "failed")

    async def _record(self, job: Claimed, outcome: Outcome) -> None:
        if outcome.status == "retry":
            settings = self._settings
            delay = retry_delay(
                job.attempts, settings.delivery_retry_base_seconds, settings.delivery_retry_max_seconds
            )
            await deliveries.retry_later(self._pool, job.id, outcome.error or "", delay)
        else:
            await deliveries.finish(self._pool, job.id, outcome.status, outcome.error, job.version)

    async def _dead_letter(self, job_id: str, body: bytes, reason: str) -> None:
        try:
            await self._broker.publish(
                body,
                queue=self._dead_queue,
                headers={ERROR_HEADER: reason},
                message_id=job_id,
                persist=True,
                content_type="application/json",
            )
        except Exception:  # the row says failed either way; the dead letter is the operator's copy
            log.exception("dead-lettering a delivery failed", job_id=job_id, reason=reason)
            return
        metrics.DEAD_LETTERED.labels(self.channel).inc()

    async def poll_forever(self) -> None:
        """Claim and send due waiting jobs until :meth:`stop`; a full batch polls again at once."""
        settings = self._settings
        while not self._stopping.is_set():
            batch = await self._with_database(
                lambda: deliveries.claim_due(
                    self._pool, self.channel, self._concurrency, settings.delivery_lease_seconds
                )
            )
            if batch:
                await asyncio.gather(*(self.run(job) for job in batch))
            if len(batch) < self._concurrency:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.delivery_poll_seconds):
                        await self._stopping.wait()

    def stop(self) -> None:
        """Let :meth:`poll_forever` finish its current batch and return."""
        self._stopping.set()

    async def close(self) -> None:
        """Close the sender's connections (after the subscriber and the poller stopped)."""
        await self._sender.close()
