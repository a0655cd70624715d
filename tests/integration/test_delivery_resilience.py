"""Delivery under trouble: SMTP down for 30 s, restarts while jobs wait, SIGKILL mid-stream, quiet hours.

Only the test's own SMTP server and ``herald-delivery`` processes are stopped; RabbitMQ and Postgres stay up.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import aio_pika
import orjson
import pytest

from herald_ops.testing.delivery import Mailbox, end_the_wait, user_with_email
from herald_ops.testing.requests import AmqpRpc
from herald_ops.testing.stack import fresh_id, stack_context, wait_until
from herald_ops.testing.worker import TOPOLOGY, Watcher, event

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg

    from herald_ops.testing.stack import Stack

pytestmark = pytest.mark.timeout(300)
TYPE = "INSTRUCTOR_MESSAGE"  # email on by default
FAST_RETRIES = {
    "delivery_retry_base_seconds": 0.5,
    "delivery_retry_max_seconds": 2.0,
    "delivery_poll_seconds": 0.2,
    "delivery_max_attempts": 60,
    "delivery_lease_seconds": 3,
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with stack_context() as stack:
        stack.start_worker()
        yield stack


async def statuses(pg: asyncpg.Connection, user: str) -> Counter[str]:
    """The states of the user's email jobs (push is on for the type too; without a VAPID key it waits)."""
    rows = await pg.fetch("SELECT status FROM delivery_jobs WHERE user_id = $1 AND channel = 'email'", user)
    return Counter(row["status"] for row in rows)


async def test_smtp_down_for_30_seconds_holds_every_job_and_loses_none(
    stack: Stack, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    delivery = stack.start_delivery(smtp_url=mailbox.url, **FAST_RETRIES)
    user, address = await user_with_email(watcher, pg)
    mailbox.stop()
    stopped = time.monotonic()
    try:
        for _ in range(20):
            await watcher.publish(event(user, TYPE))

        async def all_retried() -> bool:
            attempts = await pg.fetchval(
                "SELECT min(attempts) FROM delivery_jobs WHERE user_id = $1 AND channel = 'email'"
                " HAVING count(*) = 20",
                user,
            )
            return attempts is not None and attempts >= 2

        await wait_until(all_retried, 60, "every job tried at least twice while SMTP is down")
        assert await statuses(pg, user) == Counter({"scheduled": 20})
        # The outage lasts 30 s in all: the scenario's length, not an assertion about timing.
        await wait_until(lambda: time.monotonic() - stopped >= 30, 60, "30 s of outage")
    finally:
        mailbox.start()
    await wait_until(lambda: mailbox.count(address) == 20, 90, "every email after SMTP returned")
    assert len({m["Message-ID"] for m in mailbox.to(address)}) == 20

    async def all_sent() -> bool:
        return await statuses(pg, user) == Counter({"sent": 20})

    await wait_until(all_sent, 30, "every job recorded sent")
    delivery.stop()


async def test_a_restart_while_jobs_wait_sends_each_once(
    stack: Stack, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    await pg.execute(f"UPDATE notification_types SET email_delay_seconds = 600 WHERE name = '{TYPE}'")
    try:
        delivery = stack.start_delivery(smtp_url=mailbox.url, **FAST_RETRIES)
        user, address = await user_with_email(watcher, pg)
        for _ in range(10):
            await watcher.publish(event(user, TYPE))

        async def waiting() -> bool:
            return await statuses(pg, user) == Counter({"scheduled": 10})

        await wait_until(waiting, 30, "ten delayed jobs waiting")
        assert delivery.stop() == 0
        assert mailbox.to(address) == []
        delivery.launch()
        await end_the_wait(pg, user)
        await wait_until(lambda: mailbox.count(address) >= 10, 60, "the waiting jobs sent")

        async def all_sent() -> bool:
            return await statuses(pg, user) == Counter({"sent": 10})

        await wait_until(all_sent, 30, "every job recorded sent")
        assert mailbox.count(address) == 10
        delivery.stop()
    finally:
        await pg.execute(f"UPDATE notification_types SET email_delay_seconds = 0 WHERE name = '{TYPE}'")


async def test_sigkill_mid_stream_delivers_everything_with_duplicates_bounded_by_in_flight(
    stack: Stack, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    concurrency = 10
    delivery = stack.start_delivery(smtp_url=mailbox.url, email_concurrency=concurrency, **FAST_RETRIES)
    user, address = await user_with_email(watcher, pg)
    total = 500
    for index in range(total):
        await watcher.publish(event(user, TYPE))
        if index == total // 5:
            await wait_until(lambda: mailbox.count(address) > 0, 60, "the first emails")
            delivery.kill()
    delivery.launch()

    async def all_sent() -> bool:
        return await statuses(pg, user) == Counter({"sent": total})

    await wait_until(all_sent, 240, "every job sent after the restart")
    received = [m["Message-ID"] for m in mailbox.to(address)]
    assert len(set(received)) == total
    # In flight at the kill: at most the queue's prefetch plus one poll batch, each `concurrency` jobs.
    assert len(received) - total <= 2 * concurrency
    delivery.stop()


async def test_quiet_hours_in_the_profiles_time_zone_hold_email_until_the_window_ends(
    stack: Stack, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    # Quiet hours have minute granularity, so their end is a minute or two away: this test proves the
    # worker holds the job until that end (in the profile's time zone), and the next one that
    # herald-delivery sends a held job once its hold is over, with a hold that ends in three seconds.
    delivery = stack.start_delivery(smtp_url=mailbox.url, **FAST_RETRIES)
    zone = ZoneInfo("Asia/Kolkata")  # UTC+05:30: a window read in UTC would not contain now
    user, address = await user_with_email(watcher, pg, timezone="Asia/Kolkata")
    now = datetime.now(zone)
    end = (now + timedelta(minutes=2)).replace(second=0, microsecond=0)  # 1 to 2 minutes from now
    start = now - timedelta(minutes=30)
    rpc = await AmqpRpc.connect(stack.amqp_url, TOPOLOGY.rpc_queue)
    try:
        window = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
        reply = await rpc.call("preferences.update", {"quiet_hours": window}, user=user)
        assert "timezone" not in reply["result"]["quiet_hours"]
    finally:
        await rpc.close()
    await watcher.publish(event(user, TYPE))

    async def held() -> bool:
        return await statuses(pg, user) == Counter({"scheduled": 1})

    await wait_until(held, 30, "the job held")
    due_at = await pg.fetchval(
        "SELECT due_at FROM delivery_jobs WHERE user_id = $1 AND channel = 'email'", user
    )
    assert due_at == end.astimezone(UTC)
    assert mailbox.to(address) == []
    delivery.stop()


async def test_a_job_held_by_quiet_hours_is_sent_when_the_hold_ends(
    stack: Stack, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    delivery = stack.start_delivery(smtp_url=mailbox.url, **FAST_RETRIES)
    user, address = await user_with_email(watcher, pg)
    # The job exactly as the worker publishes it for a user in quiet hours (`deliver_after` = their end).
    notification_id = fresh_id("n")
    job_key = f"{notification_id}:{user}:email"
    hold_ends = datetime.now(UTC) + timedelta(seconds=3)
    job = {
        "notification": {
            "id": notification_id,
            "type": TYPE,
            "category": "social",
            "title": "After quiet hours",
            "message": "Body",
            "data": {},
            "created_at": datetime.now(UTC).isoformat(),
        },
        "user_id": user,
        "channel": "email",
        "deliver_after": hold_ends.isoformat(),
        "job_key": job_key,
        "version": 1,
    }
    exchange = await watcher.channel.get_exchange(TOPOLOGY.deliveries_exchange)
    await exchange.publish(
        aio_pika.Message(orjson.dumps(job), content_type="application/json", message_id=job_key),
        routing_key="email",
    )

    await wait_until(lambda: mailbox.count(address) == 1, 30, "the email once the hold ended")

    async def sent() -> bool:
        return await statuses(pg, user) == Counter({"sent": 1})

    await wait_until(sent, 30, "the job recorded sent")
    row = await pg.fetchrow(
        "SELECT due_at, sent_at FROM delivery_jobs WHERE user_id = $1 AND channel = 'email'", user
    )
    # Sent only once the hold was over (how long the job waited is not asserted: a slow machine may record
    # it after the hold ended, and then it goes at once).
    assert row["due_at"] == hold_ends
    assert row["sent_at"] >= hold_ends
    assert mailbox.to(address)[0]["Subject"] == "After quiet hours"
    delivery.stop()


async def test_jobs_waiting_on_a_slow_relay_keep_their_leases_and_go_once(
    stack: Stack, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    """Eight claimed jobs queue on one SMTP connection for longer than the lease: the process renews the
    leases of the jobs it holds, so none is claimed again or sent twice."""
    mailbox.slow = 0.4  # 8 messages take about 3 s through the one connection; the lease is 1 s
    delivery = stack.start_delivery(
        smtp_url=mailbox.url,
        delivery_lease_seconds=1,
        delivery_poll_seconds=0.2,
        email_concurrency=8,
        smtp_connections=1,
    )
    try:
        user, address = await user_with_email(watcher, pg)
        for _ in range(8):
            await watcher.publish(event(user, TYPE))

        async def all_sent() -> bool:
            return await statuses(pg, user) == Counter({"sent": 8})

        await wait_until(all_sent, 60, "every job sent")
        assert mailbox.count(address) == 8
        attempts = await pg.fetch(
            "SELECT attempts FROM delivery_jobs WHERE user_id = $1 AND channel = 'email'", user
        )
        assert {row["attempts"] for row in attempts} == {1}
    finally:
        mailbox.slow = 0.0
        delivery.stop()
