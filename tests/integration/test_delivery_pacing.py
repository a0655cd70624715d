"""The rate caps count requests (``HERALD_PUSH_RATE`` is pushes per second, ``HERALD_SMTP_RATE`` emails):
a push job to several devices takes a slot per device, an email one. A channel runner sends one claimed job
in this process, with its real sender (to a loopback push service, an aiosmtpd server) and a real limiter
that counts the slots taken from it; nothing is timed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from aiolimiter import AsyncLimiter

from herald_ops.testing.delivery import BrowserKeys, job_message, running_receiver, web_push_sender
from herald_ops.testing.stack import fresh_id, wait_until
from herald_ops.testing.worker import TOPOLOGY
from shared.settings import Settings
from worker.amqp import broker
from worker.delivery.render import EmailRenderer
from worker.delivery.runner import ChannelRunner
from worker.delivery.senders.email import EmailSender, SmtpTarget
from worker.delivery.settings import DeliverySettings
from worker.store import push
from worker.store.deliveries import claim_due, record
from worker.store.pool import create_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from herald_ops.testing.delivery import Mailbox
    from herald_ops.testing.stack import Stack
    from worker.delivery.senders.base import Sender

pytestmark = pytest.mark.timeout(120)


class CountingLimiter(AsyncLimiter):
    """A rate cap high enough never to wait here, counting the slots taken from it."""

    def __init__(self) -> None:
        super().__init__(1000, 1.0)
        self.taken = 0.0

    async def acquire(self, amount: float = 1) -> None:
        self.taken += amount
        await super().acquire(amount)


@pytest.fixture
async def pool(fresh_stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=2))
    yield created
    await created.close()


async def send_one_job(stack: Stack, pool: asyncpg.Pool, sender: Sender, user: str) -> CountingLimiter:
    """Record ``user``'s job of the sender's channel, claim it and let a runner send it; the limiter."""
    job = job_message(fresh_id("n"), user, sender.channel, title="Paced")
    await record(pool, [job])
    (claimed,) = await claim_due(pool, sender.channel, 10, 30)
    limiter = CountingLimiter()
    runner = ChannelRunner(
        sender=sender,
        settings=DeliverySettings(database_url=stack.database_url),
        pool=pool,
        broker=broker(stack.amqp_url),  # never connected: only a job that failed would be dead-lettered
        dead_queue=TOPOLOGY.deliveries_dead_queue,
        limiter=limiter,
        concurrency=1,
    )
    try:
        await runner.run(claimed)
    finally:
        await runner.close()
    status = await pool.fetchval("SELECT status FROM delivery_jobs WHERE id = $1", job.id)
    assert status == "sent"
    return limiter


async def test_a_push_job_takes_a_slot_of_the_rate_cap_per_device(
    fresh_stack: Stack, pool: asyncpg.Pool
) -> None:
    user, devices = fresh_id(), [fresh_id("s") for _ in range(3)]
    with running_receiver() as receiver:
        for device in devices:
            keys = BrowserKeys().subscription(receiver.endpoint(device))["keys"]
            await push.subscribe(
                pool,
                fresh_id("sub"),
                user,
                receiver.endpoint(device),
                (keys["p256dh"], keys["auth"]),
                None,
                20,
            )
        sender = web_push_sender(pool)
        limiter = await send_one_job(fresh_stack, pool, sender, user)
        assert [len(receiver.to(device)) for device in devices] == [1, 1, 1]
    assert limiter.taken == len(devices)


async def test_an_email_takes_one_slot_of_the_rate_cap(
    fresh_stack: Stack, pool: asyncpg.Pool, fresh_db: asyncpg.Connection, mailbox: Mailbox
) -> None:
    user = fresh_id()
    address = f"{user}@mail.test"
    await fresh_db.execute("INSERT INTO user_profiles (user_id, email) VALUES ($1, $2)", user, address)
    renderer = EmailRenderer(
        templates_dir=None, app_name="Herald", sender="Herald <noreply@herald.test>", unsubscribe_url=None
    )
    sender = EmailSender(SmtpTarget.from_url(mailbox.url), timeout=10, renderer=renderer)
    limiter = await send_one_job(fresh_stack, pool, sender, user)
    await wait_until(lambda: mailbox.count(address) == 1, 30, "the email")
    assert limiter.taken == 1
