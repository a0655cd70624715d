"""``herald-api`` under load and without a worker, end to end, each test on a stack of its own.

The per-user rate limit (429 / 4029 with ``Retry-After``, buckets per user), the cap on one user's
requests in flight to the worker (a stand-in worker holds them), and 503 / 5003 while the worker is
stopped, served again once it is back. Uses ``test_api``'s ``auth`` and ``error_of``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest

from herald_ops.testing.gateway import Responder
from herald_ops.testing.stack import fresh_id, stack_context, wait_until, wait_until_sync
from tests.integration.test_api import INBOX, auth, error_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from herald_ops.testing.stack import Stack

pytestmark = pytest.mark.timeout(120)


def test_rate_limit_is_429_per_user() -> None:
    with stack_context() as stack:
        stack.start_worker()
        api = stack.start_api(rate_limit_burst=3, rate_limit_per_second=0.01)
        limited, other = fresh_id(), fresh_id()
        with httpx.Client(base_url=api.url, timeout=15) as client:
            statuses = [
                client.get(f"{INBOX}/unread-count", headers=auth(limited)).status_code for _ in range(5)
            ]
            assert statuses == [200, 200, 200, 429, 429]
            response = client.get(f"{INBOX}/unread-count", headers=auth(limited))
            assert error_of(response, 429)["code"] == 4029
            assert response.headers["Retry-After"] == "1"
            # Buckets are per user: another user is not limited by the first one's requests.
            assert client.get(f"{INBOX}/unread-count", headers=auth(other)).status_code == 200


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    """A stack of the test's own, without a worker."""
    with stack_context() as stack:
        yield stack


async def test_requests_in_flight_are_capped_per_user(own_stack: Stack) -> None:
    """docs/gateway.md: one user cannot hold more than ``HERALD_MAX_USER_REQUESTS_IN_FLIGHT`` requests
    awaiting the worker. Past the cap the user's next request is 429 / 4029 at once; other users are
    served, and the user's slots come back as the worker answers. A stand-in worker holds requests until
    told to answer."""
    responder = Responder(own_stack.amqp_url)
    await responder.start()
    held: list[asyncio.Task[httpx.Response]] = []
    try:
        api = own_stack.start_api(
            max_user_requests_in_flight=2, rpc_timeout=60, rate_limit_burst=100, rate_limit_per_second=100
        )
        user, other = fresh_id(), fresh_id()
        path = f"{INBOX}/read"
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
            held += [
                asyncio.create_task(
                    client.post(path, json={"ids": ["n-1"], "hold": True}, headers=auth(user))
                )
                for _ in range(2)
            ]
            await wait_until(
                lambda: responder.peak_in_flight.get(user) == 2, 30, "both requests at the worker"
            )
            refused = await client.post(path, json={"ids": ["n-1"]}, headers=auth(user))
            assert error_of(refused, 429)["code"] == 4029
            assert refused.headers["Retry-After"] == "1"
            assert (await client.post(path, json={"ids": ["n-1"]}, headers=auth(other))).status_code == 200
            responder.release_held()
            assert [response.status_code for response in await asyncio.gather(*held)] == [200, 200]
            # Answered: the user's slots are back.
            again = await client.post(path, json={"ids": ["n-1"]}, headers=auth(user))
            assert again.status_code == 200, again.text
    finally:
        responder.release_held()
        await asyncio.gather(*held, return_exceptions=True)
        await responder.stop()


def test_503_when_the_worker_is_stopped() -> None:
    with stack_context() as stack:
        worker = stack.start_worker()
        api = stack.start_api(rpc_timeout=1)
        user = fresh_id()
        with httpx.Client(base_url=api.url, timeout=15) as client:
            assert client.get(f"{INBOX}/unread-count", headers=auth(user)).status_code == 200
            worker.stop()
            error = error_of(client.get(f"{INBOX}/unread-count", headers=auth(user)), 503)
            assert error["code"] == 5003
            worker.launch()
            wait_until_sync(
                lambda: client.get(f"{INBOX}/unread-count", headers=auth(user)).status_code == 200,
                30,
                "the api serving again once the worker is back",
            )
