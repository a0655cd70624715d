"""One channel's job loop: claim due jobs from Postgres in batches, send them, record the outcomes in batches.

The worker records its jobs in ``delivery_jobs`` in the transaction that stores their notifications and
the statement sends ``NOTIFY`` (:mod:`worker.delivery.wakeup` wakes the runner of the channel); a job
message another service published to ``herald.deliveries.<channel>`` is recorded the same way
(:meth:`ChannelRunner.on_message`) and acked. :meth:`ChannelRunner.pump` keeps up to ``concurrency`` jobs
in flight: it claims due jobs (with the user's profile) in one statement whenever half the slots are free,
and between wake-ups looks again every ``HERALD_DELIVERY_POLL_SECONDS`` (jobs held by quiet hours, a catalog
delay or a retry's backoff come due without a notification; a lost listener costs only latency). A job
keeps its slot until its outcome is written: outcomes finished while a write runs go into the next write.

Exactly-once in normal operation: a job is sent only by the holder of its lease, whose outcome write
releases it. The holder renews the leases of its jobs in flight every third of the lease (a claimed job
may wait long for one of the channel's connections or for the rate cap), so a lease runs out only when its
holder died: a process killed after the server accepted a message but before that write leaves its lease
to expire, and only such in-flight jobs (at most ``concurrency`` per channel and process) are sent again
(docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial
from typing import TYPE_CHECKING, Final, TypeVar

import asyncpg
import orjson
import structlog

from shared.deadletter import bounded_reason
from shared.topology import ERROR_HEADER
from worker.delivery import metrics
from worker.delivery.jobs import InvalidJob, Outcome, parse_job, retry_delay, settle, to_record
from worker.frames import UNDECODABLE_REASON, undecodable
from worker.store import deliveries
from worker.store.deliveries import Finished
from worker.store.pool import is_outage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aio_pika.abc import AbstractIncomingMessage
    from aiolimiter import AsyncLimiter
    from faststream.rabbit import RabbitBroker

    from worker.delivery.senders.base import Sender
    from worker.delivery.settings import DeliverySettings
    from worker.store.deliveries import Claimed

log = structlog.get_logger("herald.delivery")

T = TypeVar("T")
_OUTAGE_BACKOFF_START: Final = 0.2
_OUTAGE_BACKOFF_MAX: Final = 5.0
#: What Postgres refuses in a job's values, so that recording it can never succeed: a data exception
#: (NUL, out of range), a constraint, a program limit (54000: a value too long for its index entry), or
#: a value orjson cannot write (nested too deep).
_REFUSED: Final = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    orjson.JSONEncodeError,
)


class _Outcomes:
    """Writes outcomes in batches: each :meth:`write` returns once its outcome is in the database, and the
    outcomes that arrive while one statement runs are written together by the next."""

    def __init__(self, write: Callable[[list[Finished]], Awaitable[None]]) -> None:
        self._write = write
        self._pending: list[tuple[Finished, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, finished: Finished) -> None:
        done = asyncio.get_running_loop().create_future()
        self._pending.append((finished, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._flush(), name="herald-outcomes")
        await done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write([finished for finished, _ in batch])
            except Exception as exc:  # not an outage (those are retried inside)
                if len(batch) == 1:
                    batch[0][1].set_exception(exc)
                    continue
                # One by one, so that one outcome the database refuses fails only its own job: the others
                # were sent, and a job whose outcome is not written is claimed and sent again.
                for finished, done in batch:
                    try:
                        await self._write([finished])
                    except Exception as single:
                        done.set_exception(single)
                    else:
                        done.set_result(None)
            else:
                for _, done in batch:
                    done.set_result(None)


class ChannelRunner:
    """Sends the jobs of one channel with its :class:`Sender`; ``limiter`` caps the sender's requests per
    second (an email each, a push job one per device it goes to)."""

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
        self._stopping = False
        self._woken = asyncio.Event()  # jobs may have come due (a NOTIFY, a recorded message, stop)
        self._freed = asyncio.Event()  # a slot came free (or stop)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._held: dict[str, Claimed] = {}  # claimed, outcome not written yet: their leases are renewed
        self._outcomes = _Outcomes(self._finish)

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

    def wake(self) -> None:
        """Jobs of this channel may be due: claim at once instead of at the next poll."""
        self._woken.set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """Record one job message from another service (the pump sends it when due), then ack it.

        A job that cannot be recorded is dead-lettered with its reason, then acked: one that breaks a
        rule, whose properties could not be decoded, with a value Postgres refuses (a NUL in a string, a
        number or date out of its column's range, a value too long to index, data nested too deep to
        serialize), or that failed in any other way but an outage, which is waited out. Left unacked, it
        would hold one of the channel's prefetch slots and come back after every restart.
        """
        try:
            if undecodable(message.headers):
                raise InvalidJob(UNDECODABLE_REASON)
            job_id, job = parse_job(message.body, message.message_id)
            if job.channel != self.channel:
                raise InvalidJob(f"channel: a {job.channel} job in the {self.channel} queue")
            with contextlib.suppress(asyncpg.UniqueViolationError):  # recorded meanwhile by a redelivery
                await self._with_database(lambda: deliveries.record(self._pool, [to_record(job_id, job)]))
        except InvalidJob as exc:
            reason = str(exc)
        except _REFUSED as exc:
            reason = f"store: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug (outages never get here): FastStream would leave it unacked
            log.exception("recording a job failed", channel=self.channel, message_id=message.message_id)
            reason = f"recording failed: {type(exc).__name__}: {exc}"
        else:
            self.wake()
            await message.ack()
            return
        await self._dead_letter(message.message_id or "", message.body, reason)
        await message.ack()

    async def pump(self) -> None:
        """Claim and send due jobs until :meth:`stop`, then wait for the jobs in flight."""
        renewing = asyncio.create_task(self._renew_leases(), name=f"herald-leases-{self.channel}")
        try:
            await self._claim_and_send()
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _claim_and_send(self) -> None:
        lease = self._settings.delivery_lease_seconds
        while not self._stopping:
            self._freed.clear()
            free = self._concurrency - len(self._in_flight)
            if free * 2 < self._concurrency:  # claim in batches: wait until half the slots are free
                await self._freed.wait()
                continue
            self._woken.clear()
            batch = await self._with_database(
                partial(deliveries.claim_due, self._pool, self.channel, free, lease)
            )
            for job in batch:
                if not job.cancelled:
                    self._held[job.id] = job
                task = asyncio.create_task(self.run(job))
                self._in_flight.add(task)
                task.add_done_callback(self._done)
            if len(batch) < free:  # nothing more is due now
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.delivery_poll_seconds):
                        await self._woken.wait()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _renew_leases(self) -> None:
        """Every third of the lease, renew the leases of the jobs this process holds."""
        lease = self._settings.delivery_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            if not self._held:
                continue
            try:
                await self._with_database(
                    partial(deliveries.extend_leases, self._pool, list(self._held.values()), lease)
                )
            except Exception:  # not an outage; the next round tries again before a lease runs out
                log.exception("renewing delivery leases failed", channel=self.channel)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._freed.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("delivery job failed", channel=self.channel, exc_info=error)

    async def run(self, job: Claimed) -> None:
        """Attempt one claimed job and record the outcome (a cancelled one is only counted)."""
        if job.cancelled:
            metrics.DELIVERIES.labels(self.channel, "cancelled").inc()
            return
        try:
            final = await self._attempt(job)
            retry_in = None
            if final.status == "retry":
                settings = self._settings
                retry_in = retry_delay(
                    job.attempts, settings.delivery_retry_base_seconds, settings.delivery_retry_max_seconds
                )
            await self._outcomes.write(Finished(job, final.status, final.error, retry_in))
        finally:
            self._held.pop(job.id, None)
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

    async def _attempt(self, job: Claimed) -> Outcome:
        """Send ``job`` within the rate cap; settled against the attempts allowed."""
        paced = 0.0  # seconds the sender waited for the rate cap, left out of its send time

        async def pace(requests: int) -> None:
            nonlocal paced
            started = time.perf_counter()
            for _ in range(requests):  # one by one: aiolimiter refuses more than its capacity at once
                await self._limiter.acquire()
            paced += time.perf_counter() - started

        try:
            started = time.perf_counter()
            outcome = await self._sender.send(job, pace)
            metrics.SEND_SECONDS.labels(self.channel).observe(time.perf_counter() - started - paced)
        except Exception as exc:  # a sender bug must not lose the job: retried like a transient failure
            log.exception("sender failed", channel=self.channel, job_id=job.id)
            outcome = Outcome.transient(f"sender error: {exc!r}")
        return settle(outcome, job.attempts, self._settings.delivery_max_attempts)

    async def _finish(self, outcomes: list[Finished]) -> None:
        await self._with_database(lambda: deliveries.finish(self._pool, outcomes))

    async def _dead_letter(self, job_id: str, body: bytes, reason: str) -> None:
        try:
            await self._broker.publish(
                body,
                queue=self._dead_queue,
                headers={ERROR_HEADER: bounded_reason(reason)},
                message_id=job_id,
                persist=True,
                content_type="application/json",
            )
        except Exception:  # the row says failed either way; the dead letter is the operator's copy
            log.exception("dead-lettering a delivery failed", job_id=job_id, reason=reason)
            return
        metrics.DEAD_LETTERED.labels(self.channel).inc()

    def stop(self) -> None:
        """Let :meth:`pump` claim nothing more, finish the jobs in flight and return."""
        self._stopping = True
        self._woken.set()
        self._freed.set()

    async def close(self) -> None:
        """Close the sender's connections (after the subscriber and the pump stopped)."""
        await self._sender.close()
