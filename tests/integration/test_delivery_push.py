"""Web Push end to end: subscriptions through ``push.*``, a real ``herald-delivery`` posting to a loopback
push service that checks the VAPID JWT and decrypts the ``aes128gcm`` body like a browser would."""

from __future__ import annotations

import asyncio
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
# The loopback receiver: http://, and its host allowed (HERALD_PUSH_HOSTS, the browsers' services by default).
PUSH = {"vapid_private_key": PRIVATE_PEM, "push_allow_http": "true", "push_hosts": "127.0.0.1"}


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
        user,
        "SECURITY_ALERT",
        title="New sign-in",
        message="From Berlin",
        data={"url": "https://a.example"},
        url="https://app.example/security",
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
    assert payload["url"] == "https://app.example/security"  # the click target (§10)
    assert set(payload) == {"id", "type", "category", "title", "message", "data", "url", "created_at"}


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


# Each refused before it reached Postgres (NUL: 22021) or a push (httpx.InvalidURL at send time).
BAD_ENDPOINTS = [
    "https://[x]/push",  # urlsplit's ValueError was an internal error
    "https://a\uff0fb/push",  # a host that NFKC-normalises to a/b
    "https://xn--zz/push",  # not an IDNA A-label
    "https://p.example:abc/push",  # httpx: invalid port
    "https://p.example:99999/push",  # httpx parses it, the connect fails outside httpx.HTTPError
    "https:///push",  # no host
    "https://p.example/a\x00b",
    "https://p.example/a\x01b",
    "https://p.example/a\x7fb",
    "https://p.example/a\u0085b",
    "https://p.example\t/push",
]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
async def test_an_endpoint_httpx_cannot_post_to_is_invalid_params(
    rpc: AmqpRpc, receiver: PushReceiver, endpoint: str
) -> None:
    user = fresh_id()
    reply = await rpc.call("push.subscribe", BrowserKeys().subscription(endpoint), user=user)
    assert reply["error"]["code"] == -32602, reply
    assert reply["error"]["data"] == "endpoint"
    assert (await rpc.call("push.list", user=user))["result"]["items"] == []


@pytest.mark.parametrize("endpoint", ["https://p.example/a\x00b", "https://p.example/a\x01b"])
async def test_unsubscribing_an_endpoint_with_control_characters_is_invalid_params(
    rpc: AmqpRpc, endpoint: str
) -> None:
    reply = await rpc.call("push.unsubscribe", {"endpoint": endpoint}, user=fresh_id())
    assert reply["error"]["code"] == -32602, reply
    assert reply["error"]["data"] == "endpoint"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"device": "lap\x00top"}, "device"),
        ({"device": "lap\ntop"}, "device"),
        ({"device": "lap\x9btop"}, "device"),
        ({"keys": {"p256dh": "AAAA\x00", "auth": "AAAA"}}, "keys.p256dh"),
        ({"keys": {"p256dh": "AAAA", "auth": "AA\x01AA"}}, "keys.auth"),
    ],
)
async def test_control_characters_in_the_device_or_keys_are_invalid_params(
    rpc: AmqpRpc, receiver: PushReceiver, change: dict[str, object], param: str
) -> None:
    user = fresh_id()
    subscription = {**BrowserKeys().subscription(receiver.endpoint(fresh_id("s"))), **change}
    reply = await rpc.call("push.subscribe", subscription, user=user)
    assert reply["error"]["code"] == -32602, reply
    assert reply["error"]["data"] == param
    assert (await rpc.call("push.list", user=user))["result"]["items"] == []


async def test_a_stored_endpoint_httpx_cannot_post_to_does_not_repeat_the_push_to_working_devices(
    delivery: HeraldProcess, rpc: AmqpRpc, watcher: Watcher, receiver: PushReceiver, pg: asyncpg.Connection
) -> None:
    # Rows stored before push.subscribe parsed endpoints: httpx refuses them at send time with errors that
    # are not httpx.HTTPError. The working device gets the push once, the job is sent on its first attempt
    # and the unusable rows are removed like gone ones.
    user, working = fresh_id(), fresh_id("s")
    browser = BrowserKeys()
    assert "result" in await rpc.call(
        "push.subscribe", browser.subscription(receiver.endpoint(working)), user=user
    )
    stored = [
        f"https://p.example:abc/push/{fresh_id('s')}",
        f"{receiver.endpoint(fresh_id('s'))}\x01",
        f"https://[x]/push/{fresh_id('s')}",
        f"http://127.0.0.1:99999/push/{fresh_id('s')}",
    ]
    for endpoint in stored:
        keys = BrowserKeys().subscription(endpoint)["keys"]
        await pg.execute(
            "INSERT INTO push_subscriptions (id, user_id, endpoint, p256dh, auth)"
            " VALUES ($1, $2, $3, $4, $5)",
            fresh_id("p"),
            user,
            endpoint,
            keys["p256dh"],
            keys["auth"],
        )
    await watcher.publish(event(user, "GRADE_RELEASED", title="Essay graded"))

    async def settled() -> bool:
        status: str | None = await pg.fetchval("SELECT status FROM delivery_jobs WHERE user_id = $1", user)
        return status not in (None, "scheduled")

    await wait_until(settled, 60, "the push job settled")
    job = await pg.fetchrow("SELECT status, attempts FROM delivery_jobs WHERE user_id = $1", user)
    assert (job["status"], job["attempts"]) == ("sent", 1)
    # The row is final: no process sends this job again, so what the receiver has is all there will be.
    (push,) = receiver.to(working)
    assert orjson.loads(browser.decrypt(push.body))["title"] == "Essay graded"
    listed = (await rpc.call("push.list", user=user))["result"]["items"]
    assert [item["endpoint"] for item in listed] == [receiver.endpoint(working)]


async def test_a_stored_endpoint_whose_host_is_not_allowed_fails_without_a_connection(
    delivery: HeraldProcess, rpc: AmqpRpc, watcher: Watcher, pg: asyncpg.Connection
) -> None:
    # A row stored before HERALD_PUSH_HOSTS came in (or while it allowed more): herald-delivery checks the
    # host again before it posts, and refuses it for good without connecting. This stack allows 127.0.0.1.
    accepted: list[object] = []

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(listen, "127.0.0.2", 0)
    user, subscription = fresh_id(), fresh_id("p")
    endpoint = f"http://127.0.0.2:{server.sockets[0].getsockname()[1]}/push/{fresh_id('s')}"
    keys = BrowserKeys().subscription(endpoint)["keys"]
    try:
        await pg.execute(
            "INSERT INTO push_subscriptions (id, user_id, endpoint, p256dh, auth)"
            " VALUES ($1, $2, $3, $4, $5)",
            subscription,
            user,
            endpoint,
            keys["p256dh"],
            keys["auth"],
        )
        await watcher.publish(event(user, "GRADE_RELEASED"))

        async def settled() -> bool:
            status: str | None = await pg.fetchval(
                "SELECT status FROM delivery_jobs WHERE user_id = $1", user
            )
            return status not in (None, "scheduled")

        await wait_until(settled, 60, "the push job settled")
    finally:
        server.close()
    job = await pg.fetchrow("SELECT status, attempts, last_error FROM delivery_jobs WHERE user_id = $1", user)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert job["last_error"] == (
        f"push subscription {subscription}: endpoint refused"
        " (host 127.0.0.2 is not one of the push services in HERALD_PUSH_HOSTS)"
    )
    assert accepted == []
    listed = (await rpc.call("push.list", user=user))["result"]["items"]
    assert [item["endpoint"] for item in listed] == [endpoint]  # kept: the setting may allow it again
