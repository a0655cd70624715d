"""Jobs ``herald-delivery`` refuses for good, at once and with the reason, end to end (a real worker and
delivery process, an aiosmtpd server): a job of another service whose notification would carry a header
of its own or whose values are too long for Postgres' indexes, an address aiosmtplib would send to another
mailbox, a template the notification does not fit. Retrying any of them would fail the same way every time."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
import pytest

from herald_ops.testing.delivery import user_with_email
from herald_ops.testing.stack import fresh_id, stack_context, wait_until
from herald_ops.testing.worker import TOPOLOGY, Watcher, event
from tests.integration.test_undecodable_input import dead_letter_reasons
from worker.delivery.jobs import MAX_JOB_KEY_BYTES

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg

    from herald_ops.testing.delivery import Mailbox
    from herald_ops.testing.stack import Stack

pytestmark = pytest.mark.timeout(180)
#: A type whose subject template has a typo (StrictUndefined: ``titel`` is undefined).
MISTYPED = "CERTIFICATE_ISSUED"
INJECTED = "\nReply-To : attacker@evil.example"


@pytest.fixture(scope="module")
def stack(mailbox: Mailbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    templates = tmp_path_factory.mktemp("templates")
    (templates / f"{MISTYPED}.subject.txt").write_text("{{ titel }}")
    with stack_context() as stack:
        stack.start_worker()
        # Retries fast and many: a job classified transient would be retried at once, not failed at once.
        stack.start_delivery(
            smtp_url=mailbox.url,
            templates_dir=str(templates),
            delivery_retry_base_seconds=0.2,
            delivery_retry_max_seconds=0.5,
            delivery_poll_seconds=0.2,
            delivery_max_attempts=20,
        )
        yield stack


async def failed_email(pg: asyncpg.Connection, user: str) -> asyncpg.Record:
    """The user's email job once it failed."""
    query = "SELECT * FROM delivery_jobs WHERE user_id = $1 AND channel = 'email' AND status = 'failed'"

    async def failed() -> bool:
        return await pg.fetchrow(query, user) is not None

    await wait_until(failed, 30, f"the email job of {user} failed")
    row = await pg.fetchrow(query, user)
    assert row is not None
    return row


async def test_an_address_aiosmtplib_would_rewrite_fails_instead_of_reaching_another_mailbox(
    watcher: Watcher, pg: asyncpg.Connection, mailbox: Mailbox
) -> None:
    local = fresh_id("inbox")
    someone_else = f"{local}@mail.test"
    rewritten = {f"(x){someone_else}": someone_else, f'{local}"x@mail.test': local}
    users = {}
    for address in rewritten:
        user = fresh_id()
        await watcher.publish({"user_id": user, "email": address}, routing_key="user.profile")
        users[user] = address
    stored = list(users)

    async def profiles_stored() -> bool:
        count: int = await pg.fetchval(
            "SELECT count(*) FROM user_profiles WHERE user_id = ANY($1) AND email IS NOT NULL", stored
        )
        return count == len(stored)

    await wait_until(profiles_stored, 30, "the profiles stored")
    await watcher.publish(event(stored, "INSTRUCTOR_MESSAGE"))

    for user, address in users.items():
        row = await failed_email(pg, user)
        assert (row["attempts"], row["last_error"]) == (
            1,
            f"email address {address!r} would be sent to {rewritten[address]!r}, another mailbox",
        )
    assert [mailbox.count(to) for to in rewritten.values()] == [0, 0]


def job_message(
    user: str, marker: str, job: dict[str, Any] | None = None, **notification: Any
) -> aio_pika.Message:
    """A job of another service on ``herald.deliveries`` (an email due now); ``marker`` is its title, ``job``
    more fields of the job."""
    body = {
        "notification": {
            "id": fresh_id("n"),
            "type": "INSTRUCTOR_MESSAGE",
            "category": "social",
            "title": marker,
            "data": {},
            "created_at": datetime.now(UTC).isoformat(),
            **notification,
        },
        "user_id": user,
        "channel": "email",
        **(job or {}),
    }
    return aio_pika.Message(orjson.dumps(body), content_type="application/json")


async def test_a_job_whose_notification_would_carry_a_header_of_its_own_is_dead_lettered_on_arrival(
    watcher: Watcher, pg: asyncpg.Connection, mailbox: Mailbox
) -> None:
    user, address = await user_with_email(watcher, pg)
    exchange = await watcher.channel.get_exchange(TOPOLOGY.deliveries_exchange)
    refused = {
        "injected id": "notification.id: Value error, must not contain control characters or line breaks",
        "injected type": "notification.type: String should match pattern",
    }
    await exchange.publish(job_message(user, "injected id", id=f"n-{fresh_id()}{INJECTED}"), "email")
    await exchange.publish(job_message(user, "injected type", type=f"INSTRUCTOR_MESSAGE{INJECTED}"), "email")
    await exchange.publish(job_message(user, "after them"), "email")

    reasons = await dead_letter_reasons(watcher.channel, TOPOLOGY.deliveries_dead_queue, *refused)
    for marker, reason in refused.items():
        assert reasons[marker].startswith(reason), (marker, reasons[marker])
    await wait_until(lambda: mailbox.count(address) == 1, 30, "the job after the refused ones sent")
    (message,) = mailbox.to(address)
    assert (message["Subject"], message["Reply-To"]) == ("after them", None)
    # Neither refused job was recorded: only the one after them has a row.
    titles = await pg.fetch(
        "SELECT notification->>'title' AS title FROM delivery_jobs WHERE user_id = $1", user
    )
    assert [row["title"] for row in titles] == ["after them"]


async def test_a_job_with_a_value_too_long_to_index_is_dead_lettered_and_frees_its_slot(
    watcher: Watcher, pg: asyncpg.Connection, mailbox: Mailbox
) -> None:
    """Postgres refuses an index entry over 2,704 bytes (54000, program limit exceeded), which used to
    escape into FastStream: the message was neither acked nor logged and held a prefetch slot for good.
    Both values are refused up front now (tests/unit/worker/test_delivery_intake.py: the error itself)."""
    user, address = await user_with_email(watcher, pg)
    exchange = await watcher.channel.get_exchange(TOPOLOGY.deliveries_exchange)
    too_long = secrets.token_hex(1500)  # 3,000 characters that TOAST cannot compress below the limit
    refused = {
        "long user id": "user_id: String should match pattern",
        "long job key": f"job_key: Value error, must be at most {MAX_JOB_KEY_BYTES} bytes in UTF-8",
    }
    await exchange.publish(job_message(too_long, "long user id"), "email")
    await exchange.publish(job_message(user, "long job key", {"job_key": too_long, "version": 1}), "email")
    await exchange.publish(job_message(user, "after them"), "email")

    reasons = await dead_letter_reasons(watcher.channel, TOPOLOGY.deliveries_dead_queue, *refused)
    for marker, reason in refused.items():
        assert reasons[marker].startswith(reason), (marker, reasons[marker])
    await wait_until(lambda: mailbox.count(address) == 1, 30, "the job after the refused ones sent")
    assert [message["Subject"] for message in mailbox.to(address)] == ["after them"]


async def test_a_template_the_notification_does_not_fit_fails_its_job_at_the_first_attempt(
    watcher: Watcher, pg: asyncpg.Connection, mailbox: Mailbox
) -> None:
    user, address = await user_with_email(watcher, pg)
    await watcher.publish(event(user, MISTYPED))

    row = await failed_email(pg, user)
    reason = "template: UndefinedError: 'titel' is undefined"
    assert (row["attempts"], row["last_error"]) == (1, reason)
    assert (await dead_letter_reasons(watcher.channel, TOPOLOGY.deliveries_dead_queue, row["id"]))[
        row["id"]
    ] == (reason)
    # Only that type's template is broken: the user's other emails go out.
    await watcher.publish(event(user, "INSTRUCTOR_MESSAGE"))
    await wait_until(lambda: mailbox.count(address) == 1, 30, "an email of a type whose templates are fine")
