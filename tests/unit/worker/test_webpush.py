"""Web Push endpoints as httpx parses them, and one device's failure staying that device's (no I/O)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

from herald_ops.testing.delivery import BrowserKeys, web_push_sender
from worker.delivery.jobs import Outcome
from worker.delivery.senders.webpush import WebPushSender
from worker.push_endpoint import audience, parse_endpoint
from worker.store import push as store
from worker.store.deliveries import Claimed

if TYPE_CHECKING:
    import asyncpg


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("https://[x]/", "not a valid URL"),
        ("https://a\uff0fb/", "not a valid URL"),
        ("https://xn--zz/", "not a valid URL"),
        ("https://p.example:abc/", "not a valid URL"),
        ("https://p.example:99999/", "out of range"),
        ("https:///push", "host"),
        ("ftp://p.example/", "https://"),
        ("https://p.example/a\x00b", "control"),
        ("https://p.example/a\x01b", "control"),
        ("https://p.example/a\u009fb", "control"),
    ],
)
def test_endpoints_httpx_cannot_post_to_are_refused(endpoint: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_endpoint(endpoint)


def test_a_valid_endpoint_parses_to_its_origin() -> None:
    url = parse_endpoint("https://Push.Example:8443/send/abc?x=1")
    assert url == httpx.URL("https://push.example:8443/send/abc?x=1")
    assert audience(url) == "https://push.example:8443"
    assert audience(parse_endpoint("https://fcm.googleapis.com:443/fcm/send/x")) == (
        "https://fcm.googleapis.com"
    )
    with pytest.raises(ValueError, match="https://"):
        parse_endpoint("http://push.example/x", ("https",))


async def test_a_send_that_raises_is_retried_for_that_subscription_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = BrowserKeys().subscription("https://push.example/x")["keys"]
    working, raising = (
        store.Subscription(name, f"https://push.example/{name}", keys["p256dh"], keys["auth"])
        for name in ("working", "raising")
    )
    recorded: list[store.Receipt] = []
    paced: list[int] = []

    async def pace(requests: int) -> None:
        paced.append(requests)

    async def targets(*args: Any) -> store.Targets:
        return store.Targets([working, raising], [])

    async def record(pool: Any, job_id: str, version: int | None, receipts: list[store.Receipt]) -> None:
        recorded.extend(receipts)

    async def post(self: Any, subscription: store.Subscription, *args: Any) -> Outcome:
        if subscription is raising:
            raise RuntimeError("not an httpx.HTTPError")
        return Outcome.sent()

    monkeypatch.setattr(store, "targets", targets)
    monkeypatch.setattr(store, "record_receipts", record)
    monkeypatch.setattr(WebPushSender, "_post", post)
    pool: asyncpg.Pool = None  # type: ignore[assignment]  # every query is replaced above
    sender = web_push_sender(pool, timeout=1.0, max_connections=1)
    notification = {"id": "n1", "type": "GRADE_RELEASED", "title": "t", "message": "m"}
    job = Claimed("j1", "u1", "push", notification, 1, False, None, {}, 1)
    try:
        outcome = await sender.send(job, pace)
    finally:
        await sender.close()
    assert outcome == Outcome.transient(
        "push raising: RuntimeError('not an httpx.HTTPError')", partly_sent=True
    )
    assert recorded == [store.Receipt("working", "sent", None)]  # the retry skips the working device
    assert paced == [2]  # a slot of the rate cap per device posted to
