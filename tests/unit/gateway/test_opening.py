"""The gateway's batched ``session.open`` when the worker does not answer: every connect gives up after one
RPC timeout in all, however many batches a storm makes, and what gave up is never sent."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.errors import RpcTimeout
from gateway.opening import CONCURRENT_REQUESTS, SessionOpener
from gateway.rpc import RpcClient
from herald_ops.testing.stack import wait_until
from shared.jsonrpc import SESSIONS_PER_REQUEST


class SilentWorker:
    """Stands for both the aio-pika channel and its aiormq underlay: records requests, never answers."""

    is_closed = False

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def basic_publish(self, body: bytes, **kwargs: Any) -> None:
        self.requests.append(orjson.loads(body))


async def test_a_storm_against_a_silent_worker_gives_up_after_one_timeout_not_one_per_batch() -> None:
    worker = SilentWorker()
    rpc = RpcClient("herald.rpc", 0.2, "guest")
    rpc._channel = rpc._underlay = worker  # type: ignore[assignment]
    opener = SessionOpener(rpc)
    users = [f"u{n}" for n in range(SESSIONS_PER_REQUEST * (CONCURRENT_REQUESTS + 2))]
    async with asyncio.timeout(30):  # a guard against hanging, far above either behaviour
        outcomes = await asyncio.gather(*(opener.open(user) for user in users), return_exceptions=True)
    assert all(isinstance(outcome, RpcTimeout) for outcome in outcomes)
    # Only the batches that could start at once were sent. One batch at a time, each waiting for its own
    # timeout, the last connects of the storm would have waited six timeouts, with six requests sent.
    assert len(worker.requests) == CONCURRENT_REQUESTS
    sent = [user for request in worker.requests for user in request["params"]["user_ids"]]
    assert sorted(sent) == sorted(users[: SESSIONS_PER_REQUEST * CONCURRENT_REQUESTS])


async def test_a_connect_that_gave_up_is_not_sent_when_its_batch_starts() -> None:
    worker = SilentWorker()
    rpc = RpcClient("herald.rpc", 0.2, "guest")
    rpc._channel = rpc._underlay = worker  # type: ignore[assignment]
    opener = SessionOpener(rpc)
    busy = []
    for n in range(CONCURRENT_REQUESTS):  # one request each, until every request that may run is in flight
        busy.append(asyncio.ensure_future(opener.open(f"busy{n}")))
        await wait_until(lambda n=n: len(worker.requests) == n + 1, 5, "the request is sent")
    left = asyncio.ensure_future(opener.open("left"))
    await asyncio.sleep(0)
    left.cancel()  # the client closed its socket while its connect was queued
    with pytest.raises(asyncio.CancelledError):
        await left
    await asyncio.gather(*busy, return_exceptions=True)
    # A later connect is the marker: the next request sent carries it, and it alone.
    marker = asyncio.ensure_future(opener.open("marker"))
    await wait_until(lambda: len(worker.requests) > CONCURRENT_REQUESTS, 5, "the marker's request is sent")
    marker.cancel()
    await asyncio.gather(marker, return_exceptions=True)
    assert [request["params"]["user_ids"] for request in worker.requests] == [
        *([f"busy{n}"] for n in range(CONCURRENT_REQUESTS)),
        ["marker"],
    ]
