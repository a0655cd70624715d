"""How ``herald-delivery`` settles a job message of another service, in-process: refused up front when its
values could never be recorded, dead-lettered with the reason whatever else goes wrong recording it, and
held through an outage. Unsettled, a message holds one of the channel's prefetch slots for good."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import orjson
import pytest
from aiolimiter import AsyncLimiter

from tests.unit.worker.test_delivery import NOTIFICATION
from worker.delivery.jobs import MAX_JOB_KEY_BYTES, InvalidJob, parse_job
from worker.delivery.runner import ChannelRunner
from worker.delivery.settings import DeliverySettings
from worker.store import deliveries

if TYPE_CHECKING:
    from collections.abc import Callable

    from aio_pika.abc import AbstractIncomingMessage
    from faststream.rabbit import RabbitBroker

    from worker.delivery.senders.base import Sender


def job_body(**fields: Any) -> bytes:
    return orjson.dumps({"notification": NOTIFICATION, "user_id": "u1", "channel": "email", **fields})


@pytest.mark.parametrize("user_id", ["u" * 129, "a/b", "", "u1\n"])
def test_a_user_id_no_event_could_name_is_not_a_job(user_id: str) -> None:
    # 3,000 characters hit Postgres' index row limit (54000), which nothing caught: the job stayed unacked.
    with pytest.raises(InvalidJob, match=r"^user_id: String should match pattern"):
        parse_job(job_body(user_id=user_id), None)


def test_a_job_key_over_its_limit_is_not_a_job() -> None:
    longest = "é" * (MAX_JOB_KEY_BYTES // 2)
    assert parse_job(job_body(job_key=longest, version=1), None)[1].job_key == longest
    with pytest.raises(
        InvalidJob, match=rf"^job_key: Value error, must be at most {MAX_JOB_KEY_BYTES} bytes"
    ):
        parse_job(job_body(job_key=longest + "a", version=1), None)
    # The worker's own keys are far shorter: 32 hex characters, the longest user id, the channel.
    worker_key = f"{'0' * 32}:{'u' * 128}:email"
    assert (
        parse_job(job_body(user_id="u" * 128, job_key=worker_key, version=1), None)[1].job_key == worker_key
    )


class Intake:
    """A runner whose broker only records dead letters, and one message's acks."""

    def __init__(self) -> None:
        self.dead: list[tuple[str, dict[str, Any]]] = []
        self.acks = 0

        async def publish(body: bytes, **options: Any) -> None:
            self.dead.append((options["message_id"], options["headers"]))

        self.runner = ChannelRunner(
            sender=cast("Sender", SimpleNamespace(channel="email")),
            settings=DeliverySettings(_env_file=None),
            pool=cast("asyncpg.Pool", None),
            broker=cast("RabbitBroker", SimpleNamespace(publish=publish)),
            dead_queue="herald.deliveries.dead",
            limiter=AsyncLimiter(10),
            concurrency=2,
        )

    async def deliver(self, body: bytes) -> None:
        async def ack() -> None:
            self.acks += 1

        message = SimpleNamespace(headers={}, body=body, message_id="m-1", ack=ack)
        await self.runner.on_message(cast("AbstractIncomingMessage", message))


def recording(*failures: Exception) -> tuple[Callable[..., Any], list[int]]:
    """A ``deliveries.record`` that raises ``failures`` in turn, then records; and its call count."""
    calls: list[int] = []
    pending = list(failures)

    async def record(*_: object) -> None:
        calls.append(1)
        if pending:
            raise pending.pop(0)

    return record, calls


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (
            asyncpg.ProgramLimitExceededError("index row size 3024 exceeds btree version 4 maximum 2704"),
            "store: ProgramLimitExceededError: index row size 3024 exceeds btree version 4 maximum 2704",
        ),
        (RuntimeError("a bug"), "recording failed: RuntimeError: a bug"),
    ],
)
async def test_a_job_that_cannot_be_recorded_is_dead_lettered_with_the_reason_and_acked(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, reason: str
) -> None:
    record, _ = recording(failure)
    monkeypatch.setattr(deliveries, "record", record)
    intake = Intake()
    await intake.deliver(job_body())
    assert intake.dead == [("m-1", {"x-herald-error": reason})]
    assert intake.acks == 1


async def test_an_outage_while_recording_a_job_is_waited_out_not_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record, calls = recording(asyncpg.ConnectionDoesNotExistError("connection was closed"))
    monkeypatch.setattr(deliveries, "record", record)
    intake = Intake()
    await intake.deliver(job_body())
    assert (len(calls), intake.dead, intake.acks) == (2, [], 1)
