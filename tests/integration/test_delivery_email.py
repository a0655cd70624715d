"""Email delivery end to end: a real worker and ``herald-delivery`` sending to an aiosmtpd SMTP server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika
import pytest

from herald_ops.testing.delivery import Mailbox, end_the_wait, user_with_email
from herald_ops.testing.stack import fresh_id, stack_context, wait_until
from herald_ops.testing.worker import TOPOLOGY, Watcher, event
from worker.delivery.jobs import Outcome
from worker.delivery.render import EmailRenderer
from worker.delivery.senders.email import EmailSender, SmtpTarget
from worker.store.deliveries import Claimed

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    import asyncpg

    from herald_ops.testing.requests import AmqpRpc
    from herald_ops.testing.stack import HeraldProcess, Stack

pytestmark = pytest.mark.timeout(240)
SENDER = "Herald <noreply@herald.test>"
UNSUBSCRIBE = "https://app.example/unsubscribe/{user_id}/{type}"
DELIVERY = {
    "email_from": SENDER,
    "unsubscribe_url": UNSUBSCRIBE,
    "delivery_retry_base_seconds": 0.2,
    "delivery_retry_max_seconds": 1.0,
    "delivery_poll_seconds": 0.2,
    "delivery_max_attempts": 4,
}


@pytest.fixture(scope="module")
def stack(mailbox: Mailbox) -> Iterator[Stack]:
    with stack_context() as stack:
        stack.start_worker()
        yield stack


@pytest.fixture(scope="module")
def delivery(stack: Stack, mailbox: Mailbox) -> HeraldProcess:
    return stack.start_delivery(smtp_url=mailbox.url, **DELIVERY)


async def unpaced(requests: int) -> None:
    """No rate cap (a sender's ``pace``) for the few sends a test makes itself."""


async def recorded(
    pg: asyncpg.Connection, user: str, *expected: tuple[str, str], channels: tuple[str, ...] = ("email",)
) -> list[asyncpg.Record]:
    """The user's job rows once their (channel, status) pairs are ``expected`` (the state is written just
    after the server accepted the message, so it can trail the message by a moment)."""

    async def reached() -> bool:
        rows = await job_rows(pg, user, channels)
        return sorted((r["channel"], r["status"]) for r in rows) == sorted(expected)

    await wait_until(reached, 30, f"jobs of {user} recorded as {expected}")
    return await job_rows(pg, user, channels)


async def job_rows(
    pg: asyncpg.Connection, user: str, channels: tuple[str, ...] = ("email",)
) -> list[asyncpg.Record]:
    """The user's jobs on ``channels``: the push jobs of these types (push on by default) wait, since
    this stack's delivery process has no VAPID key."""
    return await pg.fetch(
        "SELECT * FROM delivery_jobs WHERE user_id = $1 AND channel = ANY($2) ORDER BY created_at",
        user,
        list(channels),
    )


async def test_one_email_per_job_with_parts_headers_and_an_escaped_title(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection, rpc: AmqpRpc
) -> None:
    user, address = await user_with_email(watcher, pg, name="Ada", locale="en")
    title = "<script>alert(1)</script> Grade"
    body = event(
        user, "GRADE_RELEASED", title=title, message="Your essay", data={"url": "https://app.example/g/1"}
    )
    await watcher.publish(body)
    await wait_until(lambda: mailbox.count(address) == 1, 60, "the email")

    message = mailbox.to(address)[0]
    assert message["From"] == SENDER
    assert message["Subject"] == title
    assert message["X-Herald-Type"] == "GRADE_RELEASED"
    notification_id = message["X-Herald-Notification-Id"]
    job_id = f"{notification_id}:{user}:email"
    assert message["List-Unsubscribe"].strip() == f"<https://app.example/unsubscribe/{user}/GRADE_RELEASED>"
    assert message["Message-ID"].endswith("@herald.test>")
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert title in text
    assert "Your essay" in text
    assert "https://app.example/g/1" in text
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Grade" in html
    assert 'href="https://app.example/g/1"' in html

    rows = await recorded(pg, user, ("email", "sent"))
    assert [(r["id"], r["status"], r["attempts"]) for r in rows] == [(job_id, "sent", 1)]
    listed = await rpc.call("deliveries.list", {"user_id": user}, user="admin", admin=True)
    # The push job waits: this stack's delivery process has no VAPID key.
    push_id = job_id.removesuffix(":email") + ":push"
    assert sorted((i["id"], i["status"], i["channel"]) for i in listed["result"]["items"]) == [
        (job_id, "sent", "email"),
        (push_id, "scheduled", "push"),
    ]
    refused = await rpc.call("deliveries.list", {}, user=user)
    assert refused["error"]["code"] == 4003
    profile = await rpc.call("profile.get", user=user)
    assert profile["result"]["email"] == address
    assert profile["result"]["name"] == "Ada"


async def test_no_address_is_skipped_and_email_off_creates_no_job(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection, rpc: AmqpRpc
) -> None:
    nobody = fresh_id()
    quiet, _ = await user_with_email(watcher, pg)
    reached, address = await user_with_email(watcher, pg)
    off = await rpc.call("preferences.update", {"channels": {"email": False}}, user=quiet)
    assert off["result"]["channels"]["email"] is False
    await watcher.publish(event([nobody, quiet, reached], "INSTRUCTOR_MESSAGE"))
    await wait_until(lambda: mailbox.count(address) == 1, 60, "the email of the user with an address")

    async def skipped() -> bool:
        return [r["status"] for r in await job_rows(pg, nobody)] == ["skipped"]

    await wait_until(skipped, 30, "the job of the user without an address skipped")
    assert (await job_rows(pg, nobody))[0]["last_error"] == "no email address"
    # The three recipients' jobs came from one batch: the one with email off never had one.
    assert await job_rows(pg, quiet) == []


async def test_transient_replies_are_retried_into_exactly_one_message(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    user, address = await user_with_email(watcher, pg)
    mailbox.defer[address] = 2
    await watcher.publish(event(user, "ASSIGNMENT_DEADLINE"))

    async def sent() -> bool:
        return [r["status"] for r in await job_rows(pg, user)] == ["sent"]

    await wait_until(sent, 60, "the job sent after two 451 replies")
    assert mailbox.count(address) == 1
    row = (await job_rows(pg, user))[0]
    assert row["attempts"] == 3
    assert mailbox.defer[address] == 0


async def test_permanent_refusal_fails_and_dead_letters_while_others_arrive(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection, stack: Stack
) -> None:
    refused, refused_address = await user_with_email(watcher, pg)
    other, other_address = await user_with_email(watcher, pg)
    mailbox.refuse[refused_address] = "550 5.1.1 no such user"
    await watcher.publish(event([refused, other], "CERTIFICATE_ISSUED"))
    await wait_until(lambda: mailbox.count(other_address) == 1, 60, "the other user's email")

    async def failed() -> bool:
        return [r["status"] for r in await job_rows(pg, refused)] == ["failed"]

    await wait_until(failed, 30, "the refused job failed")
    row = (await job_rows(pg, refused))[0]
    assert row["attempts"] == 1
    assert "550" in row["last_error"]
    assert mailbox.to(refused_address) == []

    connection = await aio_pika.connect(stack.amqp_url)
    try:
        channel = await connection.channel()
        dead = await channel.get_queue(TOPOLOGY.deliveries_dead_queue, ensure=False)
        found: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def dead_lettered() -> bool:
            message = await dead.get(fail=False)
            if message is not None:
                await message.ack()
                if message.message_id == row["id"]:
                    found.append(message)
            return bool(found)

        await wait_until(dead_lettered, 30, "the dead letter")
        assert found[0].headers["x-herald-error"] == "smtp 550: 5.1.1 no such user"
    finally:
        await connection.close()


async def test_a_reply_text_postgres_would_refuse_fails_only_its_own_job(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    """A NUL in a server's reply once failed the write of every outcome in its statement: the others'
    jobs, already sent, were claimed and sent again, and the refused one never settled."""
    refused, refused_address = await user_with_email(watcher, pg)
    others = [await user_with_email(watcher, pg) for _ in range(3)]
    mailbox.refuse[refused_address] = "550 5.1.1 no\x00such user"
    await watcher.publish(event([refused, *(user for user, _ in others)], "CERTIFICATE_ISSUED"))

    async def settled() -> bool:
        rows = [r["status"] for user in (refused, *(u for u, _ in others)) for r in await job_rows(pg, user)]
        return rows == ["failed", "sent", "sent", "sent"]

    await wait_until(settled, 60, "the refused job failed and the others sent")
    assert (await job_rows(pg, refused))[0]["last_error"] == "smtp 550: 5.1.1 nosuch user"
    assert [mailbox.count(address) for _, address in others] == [1, 1, 1]


async def test_a_non_ascii_address_is_sent_with_smtputf8(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    user, address = await user_with_email(watcher, pg, domain="exämple.test")
    await watcher.publish(event(user, "CERTIFICATE_ISSUED", title="Zertifikat"))
    await wait_until(lambda: mailbox.count(address) == 1, 60, "the email to a non-ASCII address")
    message = mailbox.to(address)[0]
    assert message["Subject"] == "Zertifikat"
    # The To header as UTF-8 (RFC 6531), not an encoded word; the parser keeps raw bytes as surrogates.
    raw_to = dict(message.raw_items())["To"].strip()
    assert raw_to.encode("ascii", "surrogateescape").decode() == address
    assert [r["status"] for r in await recorded(pg, user, ("email", "sent"))] == ["sent"]


async def test_a_server_without_smtputf8_refuses_a_non_ascii_address_for_good() -> None:
    """RFC 6531: without the extension the server cannot take the address, so the job fails at once
    instead of being retried until it runs out of attempts."""
    strict = Mailbox(enable_smtputf8=False)
    strict.start()
    try:
        renderer = EmailRenderer(templates_dir=None, app_name="Herald", sender=SENDER, unsubscribe_url=None)
        sender = EmailSender(SmtpTarget.from_url(strict.url), timeout=10, renderer=renderer)
        address, plain = f"{fresh_id()}@exämple.test", f"{fresh_id()}@example.test"

        def job(to: str) -> Claimed:
            return Claimed(
                id=f"j1:{to}:email",
                user_id=to,
                channel="email",
                notification={
                    "id": "j1",
                    "type": "CERTIFICATE_ISSUED",
                    "title": "T",
                    "message": "M",
                    "data": {},
                },
                attempts=1,
                cancelled=False,
                version=None,
                profile={"email": to, "name": None, "locale": None, "timezone": None},
                claims=1,
            )

        outcome = await sender.send(job(address), unpaced)  # on a new connection: the first thing it sends
        assert await sender.send(job(plain), unpaced) == Outcome.sent()
        await sender.close()
    finally:
        strict.stop()
    assert strict.count(plain) == 1
    assert outcome == Outcome.permanent("smtp: a non-ASCII address needs SMTPUTF8, which the server lacks")
    assert strict.count(address) == 0


async def test_delayed_job_is_cancelled_by_a_read_and_sent_when_unread(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection, rpc: AmqpRpc
) -> None:
    await pg.execute(
        "UPDATE notification_types SET email_delay_seconds = 600 WHERE name = 'COURSE_SCHEDULE_CHANGE'"
    )
    # A job waiting for a read is cancelled when it falls due and its notification was read.
    try:
        reader, reader_address = await user_with_email(watcher, pg)
        ignorer, ignorer_address = await user_with_email(watcher, pg)
        await watcher.publish(event(reader, "COURSE_SCHEDULE_CHANGE"))
        await watcher.publish(event(ignorer, "COURSE_SCHEDULE_CHANGE"))

        async def scheduled(user: str) -> bool:
            return [r["status"] for r in await job_rows(pg, user)] == ["scheduled"]

        await wait_until(lambda: scheduled(reader), 30, "the reader's delayed job")
        notification_id = (await job_rows(pg, reader))[0]["notification_id"]
        marked = await rpc.call("notifications.mark_read", {"ids": [notification_id]}, user=reader)
        assert marked["result"]["updated"] == 1
        await wait_until(lambda: scheduled(ignorer), 30, "the ignorer's delayed job")
        await end_the_wait(pg, reader, ignorer)

        await wait_until(lambda: mailbox.count(ignorer_address) == 1, 60, "the unread one's email")

        async def cancelled() -> bool:
            return [r["status"] for r in await job_rows(pg, reader)] == ["cancelled"]

        await wait_until(cancelled, 30, "the read one's job cancelled")
        assert mailbox.to(reader_address) == []
        sent = (await recorded(pg, ignorer, ("email", "sent")))[0]
        assert sent["sent_at"] >= sent["due_at"]
    finally:
        await pg.execute(
            "UPDATE notification_types SET email_delay_seconds = 0 WHERE name = 'COURSE_SCHEDULE_CHANGE'"
        )


async def test_a_broadcast_emails_the_known_users_whose_preferences_allow_it(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection, rpc: AmqpRpc
) -> None:
    reached, address = await user_with_email(watcher, pg)
    opted_out, opted_out_address = await user_with_email(watcher, pg)
    for user, update in ((reached, {}), (opted_out, {"channels": {"email": False}})):
        assert "result" in await rpc.call("preferences.update", update, user=user)  # both known users
    title = f"Maintenance {fresh_id('t')}"
    sent = await rpc.call(
        "notifications.broadcast", {"type": "GRADE_RELEASED", "title": title}, user="ops", admin=True
    )
    assert sent["result"]["accepted"] is True
    await wait_until(lambda: mailbox.count(address) == 1, 60, "the broadcast's email")
    assert mailbox.to(address)[0]["Subject"] == title
    # This stack's delivery has no VAPID key: the push job waits for a process that can send it.
    await recorded(pg, reached, ("email", "sent"), ("push", "scheduled"), channels=("email", "push"))
    assert [r["channel"] for r in await job_rows(pg, opted_out, ("email", "push"))] == ["push"]
    assert mailbox.to(opted_out_address) == []


async def test_a_collapsed_notification_replaces_its_waiting_email_and_a_later_version_is_a_new_one(
    delivery: HeraldProcess, mailbox: Mailbox, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    # Amendments 14 and 25: the versions of one collapsed notification share a job key; while its email
    # waits (a delay) a higher version replaces it, and once sent a higher version is a job of its own.
    # The delay is long so the three versions surely arrive while the email waits, however slow the
    # machine; once they have, the test ends the wait (how a delay elapses is another test's subject).
    await pg.execute(
        "UPDATE notification_types SET email_delay_seconds = 600 WHERE name = 'COURSE_COMPLETED'"
    )
    try:
        user, address = await user_with_email(watcher, pg)

        async def collapsed_into(count: int) -> bool:
            return await pg.fetchval("SELECT max(count) FROM notifications WHERE user_id = $1", user) == count

        async def waiting_due_at() -> list[datetime]:
            rows = await job_rows(pg, user)
            return [r["due_at"] for r in rows if r["status"] == "scheduled"]

        titles = [f"{n} courses completed" for n in (1, 2, 3)]
        await watcher.publish(event(user, "COURSE_COMPLETED", title=titles[0], collapse_key="done"))

        async def first_waiting() -> bool:
            return bool(await waiting_due_at())

        await wait_until(first_waiting, 30, "the first version's email waiting")
        first_due_at = await waiting_due_at()
        for n, title in enumerate(titles[1:], 2):
            await watcher.publish(event(user, "COURSE_COMPLETED", title=title, collapse_key="done"))
            await wait_until(lambda n=n: collapsed_into(n), 30, f"event {n} collapsed")
        notification = await pg.fetchrow("SELECT id, seq FROM notifications WHERE user_id = $1", user)
        key = f"{notification['id']}:{user}:email"

        async def replaced() -> bool:
            rows = await job_rows(pg, user)
            return [(r["id"], r["job_key"], r["version"]) for r in rows] == [(key, key, notification["seq"])]

        await wait_until(replaced, 30, "one waiting job holding the latest version")
        assert await waiting_due_at() == first_due_at  # a replacement keeps the waiting job's due time
        assert mailbox.to(address) == []
        await pg.execute("UPDATE delivery_jobs SET due_at = now() WHERE id = $1", key)
        await wait_until(lambda: mailbox.count(address) == 1, 60, "the delayed email")
        (row,) = await recorded(pg, user, ("email", "sent"))
        assert mailbox.to(address)[0]["Subject"] == titles[-1]
        # The job keeps no copy (sql/009): the claim read the in-app row, at its latest version.
        copy = await pg.fetchval("SELECT notification FROM delivery_jobs WHERE id = $1", key)
        assert (row["id"], copy) == (key, None)

        # The notification is still unread: a fourth event collapses into it after its email was sent
        # (without a delay now, so its email leaves at once).
        await pg.execute(
            "UPDATE notification_types SET email_delay_seconds = 0 WHERE name = 'COURSE_COMPLETED'"
        )
        await watcher.publish(
            event(user, "COURSE_COMPLETED", title="4 courses completed", collapse_key="done")
        )
        await wait_until(lambda: collapsed_into(4), 30, "event 4 collapsed")
        await wait_until(lambda: mailbox.count(address) == 2, 60, "the later version's email")
        assert [m["Subject"] for m in mailbox.to(address)] == [titles[-1], "4 courses completed"]
        rows = await recorded(pg, user, ("email", "sent"), ("email", "sent"))
        latest_seq = await pg.fetchval("SELECT seq FROM notifications WHERE id = $1", notification["id"])
        assert [(r["id"], r["job_key"], r["version"]) for r in rows] == [
            (key, key, notification["seq"]),
            (f"{key}:{latest_seq}", key, latest_seq),
        ]
    finally:
        await pg.execute(
            "UPDATE notification_types SET email_delay_seconds = 0 WHERE name = 'COURSE_COMPLETED'"
        )
