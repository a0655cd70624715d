"""Web Push end to end: subscriptions through ``push.*``, a real ``herald-delivery`` posting to a loopback
push service that checks the VAPID JWT and decrypts the ``aes128gcm`` body like a browser would."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import orjson
import pytest

from herald_ops.testing.delivery import BrowserKeys, PushReceiver, running_receiver, verify_vapid
from herald_ops.testing.stack import fresh_id, stack_context, wait_until
from herald_ops.testing.worker import Watcher, event
from worker.vapid import new_key_pair

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg

    from herald_ops.testing.requests import AmqpRpc
    from herald_ops.testing.stack import HeraldProcess, Stack

pytestmark = pytest.mark.timeout(180)
PRIVATE_PEM, PUBLIC_KEY = new_key_pair()
PUSH = {"vapid_private_key": PRIVATE_PEM, "push_allow_http": "true"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[PushReceiver]:
    with running_receiver() as service:
        yield service


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with stack_context() as stack:
        stack.start_worker(**PUSH)
        yield stack


@pytest.fixture(scope="module")
def delivery(stack: Stack) -> HeraldProcess:
    return stack.start_delivery(
        vapid_subject="mailto:ops@herald.test",
        push_ttl=600,
        delivery_retry_base_seconds=0.2,
        delivery_retry_max_seconds=1.0,
        delivery_poll_seconds=0.2,
        **PUSH,
    )


async def test_subscriptions_are_validated_deduplicated_and_listed(
    rpc: AmqpRpc, receiver: PushReceiver
) -> None:
    user = fresh_id()
    key = await rpc.call("push.vapid_key", user=user)
    assert key["result"] == {"public_key": PUBLIC_KEY}
    subscription = BrowserKeys().subscription(receiver.endpoint(fresh_id("s")))
    first = await rpc.call("push.subscribe", {**subscription, "device": "laptop"}, user=user)
    again = await rpc.call("push.subscribe", subscription, user=user)
    assert first["result"]["id"] == again["result"]["id"]
    listed = (await rpc.call("push.list", user=user))["result"]["items"]
    assert [(i["endpoint"], i["device"]) for i in listed] == [(subscription["endpoint"], "laptop")]

    bad_key = {**subscription, "keys": {**subscription["keys"], "p256dh": "AAAA"}}
    assert (await rpc.call("push.subscribe", bad_key, user=user))["error"]["data"] == "keys.p256dh"
    file_url = {**subscription, "endpoint": "file:///etc/passwd"}
    assert (await rpc.call("push.subscribe", file_url, user=user))["error"]["data"] == "endpoint"
    assert (await rpc.call("push.unsubscribe", {"endpoint": subscription["endpoint"]}, user=user))[
        "result"
    ] == {"removed": 1}
    assert (await rpc.call("push.list", user=user))["result"]["items"] == []


async def test_at_most_twenty_subscriptions_per_user(rpc: AmqpRpc, receiver: PushReceiver) -> None:
    user = fresh_id()
    endpoints = [receiver.endpoint(fresh_id("s")) for _ in range(21)]
    for endpoint in endpoints:
        reply = await rpc.call("push.subscribe", BrowserKeys().subscription(endpoint), user=user)
        assert "result" in reply
    listed = (await rpc.call("push.list", user=user))["result"]["items"]
    assert len(listed) == 20
    assert endpoints[0] not in {item["endpoint"] for item in listed}


async def test_a_push_is_signed_encrypted_and_carries_the_notification(
    delivery: HeraldProcess, rpc: AmqpRpc, watcher: Watcher, receiver: PushReceiver
) -> None:
    user, name = fresh_id(), fresh_id("s")
    browser = BrowserKeys()
    assert "result" in await rpc.call(
        "push.subscribe", browser.subscription(receiver.endpoint(name)), user=user
    )
    body = event(
        user, "SECURITY_ALERT", title="New sign-in", message="From Berlin", data={"url": "https://a.example"}
    )
    await watcher.publish(body)
    await wait_until(lambda: len(receiver.to(name)) == 1, 60, "the push")

    push = receiver.to(name)[0]
    claims = verify_vapid(push.headers["authorization"], PUBLIC_KEY, f"http://127.0.0.1:{receiver.port}")
    assert claims["sub"] == "mailto:ops@herald.test"
    assert push.headers["content-encoding"] == "aes128gcm"
    assert push.headers["ttl"] == "600"
    assert push.headers["urgency"] == "high"  # SECURITY_ALERT is critical
    payload = orjson.loads(browser.decrypt(push.body))
    assert payload["title"] == "New sign-in"
    assert payload["message"] == "From Berlin"
    assert payload["data"] == {"url": "https://a.example"}
    assert push.headers["topic"] == hashlib.blake2b(payload["id"].encode(), digest_size=16).hexdigest()
    assert set(payload) == {"id", "type", "category", "title", "message", "data", "created_at"}


async def test_a_gone_subscription_is_removed(
    delivery: HeraldProcess, rpc: AmqpRpc, watcher: Watcher, receiver: PushReceiver
) -> None:
    user, name = fresh_id(), fresh_id("s")
    receiver.status[f"/push/{name}"] = 410
    assert "result" in await rpc.call(
        "push.subscribe", BrowserKeys().subscription(receiver.endpoint(name)), user=user
    )
    await watcher.publish(event(user, "GRADE_RELEASED"))
    await wait_until(lambda: len(receiver.to(name)) == 1, 60, "the push answered 410")

    async def emptied() -> bool:
        return (await rpc.call("push.list", user=user))["result"]["items"] == []

    await wait_until(emptied, 30, "the subscription removed")


async def test_a_device_that_failed_transiently_is_retried_alone(
    delivery: HeraldProcess, rpc: AmqpRpc, watcher: Watcher, receiver: PushReceiver, pg: asyncpg.Connection
) -> None:
    # Amendment 22: one device accepts, the other's push service answers 503 once. The retry goes to the
    # second device only, and the job is sent once both have the push.
    user = fresh_id()
    devices = {fresh_id("s"): BrowserKeys() for _ in range(2)}
    accepting, unavailable = devices
    receiver.unavailable[f"/push/{unavailable}"] = 1
    for name, browser in devices.items():
        reply = await rpc.call("push.subscribe", browser.subscription(receiver.endpoint(name)), user=user)
        assert "result" in reply
    await watcher.publish(event(user, "GRADE_RELEASED", title="Essay graded"))

    async def sent() -> bool:
        status: str | None = await pg.fetchval("SELECT status FROM delivery_jobs WHERE user_id = $1", user)
        return status == "sent"

    await wait_until(sent, 60, "the job sent to both devices")
    # The row is final: no process sends this job again, so what the receiver has is all there will be.
    assert [p.status for p in receiver.to(accepting)] == [201]
    assert [p.status for p in receiver.to(unavailable)] == [503, 201]
    for name, browser in devices.items():
        (push,) = [p for p in receiver.to(name) if p.accepted]
        assert orjson.loads(browser.decrypt(push.body))["title"] == "Essay graded"
    attempts = await pg.fetchval("SELECT attempts FROM delivery_jobs WHERE user_id = $1", user)
    assert attempts == 2
