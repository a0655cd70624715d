"""``push.subscribe`` with the production defaults (``HERALD_PUSH_HOSTS`` unset, ``HERALD_PUSH_ALLOW_HTTP``
off): an endpoint naming a host inside the network is invalid params, so herald-delivery never posts there;
a browser push service's endpoint is stored."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from herald_ops.testing.delivery import BrowserKeys
from herald_ops.testing.stack import fresh_id, stack_context
from worker.vapid import new_key_pair

if TYPE_CHECKING:
    from collections.abc import Iterator

    from herald_ops.testing.requests import AmqpRpc
    from herald_ops.testing.stack import Stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with stack_context() as stack:
        stack.start_worker(vapid_private_key=new_key_pair()[0])
        yield stack


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1:6443/api/v1/namespaces",
        "https://169.254.169.254/latest/api/token",
        "https://[::1]:5432/",
        "https://10.0.0.5:15672/api/definitions",
        "https://localhost:8766/metrics",
    ],
)
async def test_an_endpoint_inside_the_network_is_invalid_params(rpc: AmqpRpc, endpoint: str) -> None:
    user = fresh_id()
    reply = await rpc.call("push.subscribe", BrowserKeys().subscription(endpoint), user=user)
    assert reply["error"]["code"] == -32602, reply
    assert reply["error"]["data"] == "endpoint"
    assert "is not one of the push services in HERALD_PUSH_HOSTS" in reply["error"]["message"]
    assert (await rpc.call("push.list", user=user))["result"]["items"] == []


async def test_a_browser_push_service_endpoint_is_stored(rpc: AmqpRpc) -> None:
    user = fresh_id()
    endpoint = f"https://fcm.googleapis.com/fcm/send/{fresh_id('d')}"
    reply = await rpc.call("push.subscribe", BrowserKeys().subscription(endpoint), user=user)
    assert "result" in reply, reply
    listed = (await rpc.call("push.list", user=user))["result"]["items"]
    assert [item["endpoint"] for item in listed] == [endpoint]
