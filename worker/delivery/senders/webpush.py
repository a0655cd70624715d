"""Web Push (RFC 8030) with ``aes128gcm`` payloads (RFC 8291) and VAPID (RFC 8292).

py-vapid signs the VAPID JWT and http-ece encrypts (the two libraries pywebpush itself is built on);
the POSTs go through one pooled ``httpx.AsyncClient`` (keep-alive per push service), not a session per
push. A job goes to every subscription of its user at once. Per subscription: 2xx delivered; 404/410
the subscription is gone and removed; 429, 5xx and network errors transient; any other 4xx (400, 403,
413, ...) permanent. An endpoint httpx cannot post to (stored before ``push.subscribe`` parsed endpoints)
is removed like a gone one; one whose host ``HERALD_PUSH_HOSTS`` does not allow (stored before the setting
came in or changed) and keys that do not decode are permanent, and nothing is posted. A subscription's
failure, whatever it is, is that subscription's outcome: it never fails the sends to the others.

A push service's reply is bounded in time and size: a request (a pool slot, connecting, sending, the
reply's status and the first :data:`REPLY_BYTES` of its body) has ``HERALD_PUSH_TIMEOUT`` seconds in all,
not per read, so an endpoint that trickles its reply cannot hold a connection of the pool; a reply whose
status came in time is classed by that status even if its body is cut short. The body is asked for
unencoded (``Accept-Encoding: identity``), never decoded, and read only as far as the error text needs: a
compressed reply (a gzip bomb) is not read at all.

While one device failed transiently, the job is retried for that device alone: the devices that accepted
it or refused it for good are kept as receipts (``push_receipts``) and skipped by the retry, so no device
gets a push twice. The job is settled when no device is left to retry: sent if any device accepted it,
failed if every one refused it for good, skipped if the user has no subscription left.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import http_ece
import httpx
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from worker.delivery.jobs import Outcome
from worker.push_endpoint import audience, check_host, parse_endpoint
from worker.store import push as store

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg
    from py_vapid import Vapid02

    from worker.delivery.senders.base import Pace
    from worker.store.deliveries import Claimed

log = structlog.get_logger("herald.delivery")

#: Largest payload before encryption (docs/protocol.md §9); the message is shortened to fit.
MAX_PAYLOAD_BYTES: Final = 3800
_PAYLOAD_FIELDS: Final = ("id", "type", "category", "title", "message", "data", "url", "created_at")
_VAPID_TTL_SECONDS: Final = 12 * 3600
_GONE: Final = frozenset({404, 410})
#: The most of a reply's body read, raw (for the error text); the rest is never read.
REPLY_BYTES: Final = 1024
_ERROR_TEXT_CHARS: Final = 200


def push_payload(notification: dict[str, Any], limit: int = MAX_PAYLOAD_BYTES) -> bytes:
    """The JSON a service worker receives, at most ``limit`` bytes: the message is cut (with "…") to fit,
    and ``data`` is dropped when even an empty message does not."""
    payload = {name: notification.get(name) for name in _PAYLOAD_FIELDS}
    body = orjson.dumps(payload)
    message = (payload["message"] or "").encode()
    while len(body) > limit and message:
        # Cut the excess in bytes, plus room for the ellipsis (3 bytes); a split character is dropped.
        message = message[: max(len(message) - (len(body) - limit) - 3, 0)]
        text = message.decode(errors="ignore")
        payload["message"] = f"{text}…" if text else ""
        body = orjson.dumps(payload)
    if len(body) > limit:
        payload["data"] = {}
        body = orjson.dumps(payload)
    return body


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def encrypt(payload: bytes, p256dh: str, auth: str) -> bytes:
    """``aes128gcm`` body for one subscription (a fresh sender key and salt each time)."""
    sender_key = ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(
        payload,
        salt=os.urandom(16),
        private_key=sender_key,
        dh=_b64decode(p256dh),
        auth_secret=_b64decode(auth),
        version="aes128gcm",
    )
    return body


class WebPushSender:
    """Sends push jobs to every subscription of the job's user."""

    channel = "push"

    def __init__(
        self,
        vapid: Vapid02,
        *,
        subject: str,
        ttl: int,
        timeout: float,
        max_connections: int,
        pool: asyncpg.Pool,
        is_critical: Callable[[str], bool],
        hosts: tuple[str, ...],
        allow_local: bool,
    ) -> None:
        self._vapid = vapid
        self._subject = subject
        self._ttl = ttl
        self._timeout = timeout
        self._pool = pool
        self._is_critical = is_critical
        self._hosts = hosts  # HERALD_PUSH_HOSTS, and HERALD_PUSH_ALLOW_HTTP (see check_host)
        self._allow_local = allow_local
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
            headers={"Accept-Encoding": "identity"},  # a reply is never decoded
        )
        self._authorization: dict[str, tuple[float, str]] = {}  # audience → (expires, header)

    def _vapid_header(self, url: httpx.URL) -> str:
        """The VAPID ``Authorization`` for the endpoint's origin, signed once per origin and half-life."""
        origin = audience(url)
        now = time.time()
        cached = self._authorization.get(origin)
        if cached is None or cached[0] - now < _VAPID_TTL_SECONDS / 2:
            expires = int(now) + _VAPID_TTL_SECONDS
            header = self._vapid.sign({"aud": origin, "sub": self._subject, "exp": expires})
            cached = self._authorization[origin] = (expires, header["Authorization"])
        return cached[1]

    async def send(self, job: Claimed, pace: Pace) -> Outcome:
        """Push to each of the user's subscriptions this job has yet to reach (a slot of the rate cap
        each); see the module docstring."""
        targets = await store.targets(self._pool, job.user_id, job.id, job.version)
        if not targets.pending and not targets.settled:
            return Outcome.skipped("no push subscription")
        notification = job.notification
        payload = push_payload(notification)
        headers = {
            "TTL": str(self._ttl),
            "Urgency": "high" if self._is_critical(notification["type"]) else "normal",
            # Topic: at most 32 base64url characters; a newer message with the same topic replaces this.
            "Topic": hashlib.blake2b(notification["id"].encode(), digest_size=16).hexdigest(),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        await pace(len(targets.pending))
        sends = await asyncio.gather(
            *(self._post(s, payload, headers) for s in targets.pending), return_exceptions=True
        )
        results = [_outcome(s, r) for s, r in zip(targets.pending, sends, strict=True)]
        settled_now = [
            store.Receipt(subscription.id, result.status, result.error)
            for subscription, result in zip(targets.pending, results, strict=True)
            if result.status in ("sent", "failed")
        ]
        settled = [*targets.settled, *settled_now]
        reached = any(receipt.status == "sent" for receipt in settled)
        transient = [result for result in results if result.status == "retry"]
        if transient:
            if settled_now:
                await store.record_receipts(self._pool, job.id, job.version, settled_now)
            return Outcome.transient(transient[0].error or "push failed", partly_sent=reached)
        if reached:
            return Outcome.sent()
        refused = [receipt for receipt in settled if receipt.status == "failed"]
        if refused:
            return Outcome.permanent(refused[0].error or "push failed")
        return Outcome.skipped("every push subscription is gone")

    async def _post(
        self, subscription: store.Subscription, payload: bytes, headers: dict[str, str]
    ) -> Outcome:
        try:
            url = parse_endpoint(subscription.endpoint)
        except ValueError as exc:  # it can never be posted to: forgotten like a gone one
            await store.remove(self._pool, subscription.id)
            log.warning("push endpoint unusable; removed", subscription_id=subscription.id, error=str(exc))
            return Outcome.skipped(f"push subscription {subscription.id}: unusable endpoint ({exc})")
        try:
            check_host(url, self._hosts, allow_local=self._allow_local)
        except ValueError as exc:  # kept: the setting may change back; nothing is posted meanwhile
            log.warning("push endpoint refused", subscription_id=subscription.id, error=str(exc))
            return Outcome.permanent(f"push subscription {subscription.id}: endpoint refused ({exc})")
        try:
            body = encrypt(payload, subscription.p256dh, subscription.auth)
        except Exception as exc:  # keys the browser gave us that do not decode or are not on the curve
            return Outcome.permanent(f"push subscription {subscription.id}: unusable keys ({exc!r})")
        reply = _Reply()
        failure: Exception | None = None
        try:
            async with asyncio.timeout(self._timeout):
                await self._exchange(url, body, {**headers, "Authorization": self._vapid_header(url)}, reply)
        except (TimeoutError, httpx.HTTPError) as exc:  # after the status: classed by the status
            failure = exc
        status = reply.status
        if status is None:  # no answer: transient, like a refused connection
            if isinstance(failure, TimeoutError):
                return Outcome.transient(
                    f"push {subscription.id}: timed out, no reply in {self._timeout:g} s"
                )
            return Outcome.transient(f"push {subscription.id}: {failure!r}")
        if 200 <= status < 300:
            return Outcome.sent()
        if status in _GONE:
            await store.remove(self._pool, subscription.id)
            log.info("push subscription gone; removed", subscription_id=subscription.id, status=status)
            return Outcome.skipped(f"push {status}")
        error = f"push {status}: {reply.text()}"
        if status == 429 or status >= 500:
            return Outcome.transient(error)
        return Outcome.permanent(error)

    async def _exchange(self, url: httpx.URL, body: bytes, headers: dict[str, str], reply: _Reply) -> None:
        """POST, filling ``reply`` as the answer comes in (what came survives a timeout)."""
        async with self._client.stream("POST", url, content=body, headers=headers) as response:
            reply.status = response.status_code
            reply.encoding = response.headers.get("Content-Encoding", "").strip().lower()
            if reply.encoding not in ("", "identity"):
                return  # never decoded, so not read
            async for chunk in response.aiter_raw():
                reply.head += chunk[: REPLY_BYTES - len(reply.head)]
                if len(reply.head) >= REPLY_BYTES:
                    break  # the connection is closed, not reused, with the rest unread

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()


@dataclass(slots=True)
class _Reply:
    """A push service's answer as far as it came: the status, and the start of the body."""

    status: int | None = None
    encoding: str = ""
    head: bytearray = field(default_factory=bytearray)

    def text(self) -> str:
        """The error text: the body's start as sent (an encoded one is not read)."""
        if self.encoding not in ("", "identity"):
            return f"(a {self.encoding[:40]}-encoded body, not read)"
        return self.head.decode(errors="replace")[:_ERROR_TEXT_CHARS]


def _outcome(subscription: store.Subscription, result: Outcome | BaseException) -> Outcome:
    """What one subscription's send came to; an error it raised is retried for that subscription alone
    (the others' outcomes are kept as receipts, so they are not sent to again)."""
    if isinstance(result, Outcome):
        return result
    if not isinstance(result, Exception):  # cancelled: the job is abandoned, not this device failed
        raise result
    log.error("push send failed", subscription_id=subscription.id, exc_info=result)
    return Outcome.transient(f"push {subscription.id}: {result!r}")
