"""The pipeline's intake in-process: a delivery is always settled, whatever goes wrong validating it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from herald_ops.testing.worker import FakeChannel, delivered
from shared.preferences import Catalog
from shared.settings import Settings
from worker.acks import AckTracker
from worker.pipeline import Pipeline

if TYPE_CHECKING:
    import asyncpg

    from worker.publish import Publisher


async def failing_reload() -> None:
    raise ConnectionRefusedError("postgres is down")


def offline_pipeline() -> Pipeline:
    """A pipeline with no database, publisher or catalog: enough for what happens before storing."""
    return Pipeline(
        settings=Settings(_env_file=None),  # type: ignore[call-arg]
        pool=cast("asyncpg.Pool", None),
        publisher=cast("Publisher", None),
        acks=AckTracker(),
        catalog=lambda: Catalog([]),
        reload_catalog=failing_reload,
    )


async def test_a_failed_catalog_reload_requeues_the_delivery_instead_of_stalling_acks() -> None:
    channel = FakeChannel()
    pipeline = offline_pipeline()
    event = {"user_id": "u1", "type": "BRAND_NEW_TYPE", "title": "t"}
    work = pipeline.accept(delivered(channel, 1, event))
    assert work is not None  # an unknown type needs a catalog reload first
    await work

    # Requeued (counted against x-delivery-limit) and settled, so later deliveries can still be acked.
    assert channel.calls == [("nack", 1, True)]
    await pipeline._acks.settle(cast("Any", channel), [2])
    assert channel.calls[-1] == ("ack", 2, True)


async def test_acks_never_name_a_nacked_tag() -> None:
    """A multiple-ack naming a nacked tag closes the channel (PRECONDITION_FAILED).

    tests/integration/test_acks_broker.py shows it on RabbitMQ.
    """
    channel = FakeChannel()
    acks = AckTracker()
    fake = cast("Any", channel)
    await acks.settle(fake, [2])  # waits for 1
    await acks.requeue(fake, [1])
    await acks.requeue(fake, [3])
    assert channel.calls == [("nack", 1, True), ("ack", 2, True), ("nack", 3, True)]
    await acks.settle(fake, [4])
    assert channel.calls[-1] == ("ack", 4, True)


async def test_while_a_broadcast_is_held_later_deliveries_are_acked_one_by_one() -> None:
    """A held delivery (a broadcast stored chunk by chunk) does not stop the acks of the ones after it."""
    channel = FakeChannel()
    acks = AckTracker()
    fake = cast("Any", channel)
    acks.hold(fake, 2)
    await acks.settle(fake, [1])
    await acks.settle(fake, [3, 4])
    await acks.requeue(fake, [5])
    await acks.settle(fake, [6])
    assert channel.calls == [
        ("ack", 1, True),
        ("ack", 3, False),
        ("ack", 4, False),
        ("nack", 5, True),
        ("ack", 6, False),
    ]
    await acks.settle(fake, [2])  # the broadcast is done: named by a multiple-ack, 3-6 are gone already
    await acks.settle(fake, [7])  # and contiguous runs are acked together again
    assert channel.calls[-2:] == [("ack", 2, True), ("ack", 7, True)]


async def test_a_statement_canceled_every_time_is_retried_a_bounded_number_of_times_then_dead_lettered() -> (
    None
):
    """A broadcast so large that ``statement_timeout`` cancels it on every attempt is not an outage that
    ends: after :data:`worker.pipeline.QUERY_CANCELED_RETRIES` retries it goes to the dead-letter path."""
    import asyncio

    import asyncpg

    from worker import pipeline as pipeline_module

    pipeline = offline_pipeline()
    attempts: list[int] = []
    poisoned: list[Exception] = []

    async def canceled(items: list[Any], store: Any) -> Any:
        attempts.append(len(items))
        raise asyncpg.QueryCanceledError("canceling statement due to statement timeout")

    async def poison(item: Any, exc: Exception) -> None:
        poisoned.append(exc)

    pipeline._commit = canceled  # type: ignore[method-assign]
    pipeline._poison = poison  # type: ignore[method-assign]
    async with asyncio.timeout(30):
        assert await pipeline._commit_resilient([cast("Any", object())], cast("Any", None)) == []
    assert len(attempts) == pipeline_module.QUERY_CANCELED_RETRIES + 1
    assert len(poisoned) == 1
    assert isinstance(poisoned[0], asyncpg.QueryCanceledError)
