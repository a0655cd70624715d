"""Real servers for the delivery tests and benchmark: an SMTP server (aiosmtpd) and a Web Push receiver.

:class:`Mailbox` speaks real SMTP on a free loopback port and keeps every accepted message; it can refuse
recipients (a fixed reply, or a number of transient replies first). :class:`PushReceiver` is an HTTP server
that keeps every POST and answers each endpoint path with a scripted status (201 by default, or a number
of 503 replies first).
:class:`BrowserKeys` is a browser's side of a push subscription: it verifies the VAPID JWT and decrypts
an ``aes128gcm`` body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import http_ece
import jwt
import orjson
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from herald_ops.testing.stack import free_port, fresh_id, wait_until
from worker.delivery.senders.webpush import WebPushSender
from worker.vapid import load_vapid, new_key_pair
from worker.writes import Job

if TYPE_CHECKING:
    from collections.abc import Iterator
    from email.message import EmailMessage

    import asyncpg

    from herald_ops.testing.worker import Watcher


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Mailbox:
    """An aiosmtpd handler that records messages; ``refuse[address]`` scripts RCPT replies."""

    def __init__(self, *, enable_smtputf8: bool = True) -> None:
        self._enable_smtputf8 = enable_smtputf8  # RFC 6531 addresses (aiosmtpd's Controller offers it)
        self._received: list[tuple[tuple[str, ...], bytes]] = []  # (envelope recipients, raw message)
        self._parsed: dict[int, EmailMessage] = {}
        self._counts: dict[str, int] = {}  # address → messages accepted: polled often, so kept, not counted
        self.refuse: dict[str, str] = {}  # address → permanent reply, e.g. "550 no such user"
        self.defer: dict[str, int] = {}  # address → how many more times to answer 451
        self.slow = 0.0  # seconds each DATA waits before its answer: a slow relay
        self.port = free_port()
        self._controller: Controller | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again) on the same port."""
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=self._enable_smtputf8
        )
        self._controller.start()

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self._lock:
            if address in self.refuse:
                return self.refuse[address]
            if self.defer.get(address, 0) > 0:
                self.defer[address] -= 1
                return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.slow:
            await asyncio.sleep(self.slow)
        # Kept raw: parsing here would slow the server down for every sender, the bare loop included.
        with self._lock:
            self._received.append((tuple(envelope.rcpt_tos), bytes(envelope.content)))
            for address in set(envelope.rcpt_tos):
                self._counts[address] = self._counts.get(address, 0) + 1
        return "250 OK"

    def count(self, address: str) -> int:
        """How many messages were accepted for ``address`` (a kept count: waits poll it while the server
        runs in the same process, and a scan of every message would slow the server down)."""
        with self._lock:
            return self._counts.get(address, 0)

    def to(self, address: str) -> list[EmailMessage]:
        """The messages received for ``address``, parsed (each once)."""
        with self._lock:
            indexes = [i for i, (recipients, _) in enumerate(self._received) if address in recipients]
            for index in indexes:
                if index not in self._parsed:
                    parsed = email.message_from_bytes(self._received[index][1], policy=email.policy.default)
                    self._parsed[index] = parsed
            return [self._parsed[index] for index in indexes]


@contextlib.contextmanager
def running_mailbox() -> Iterator[Mailbox]:
    mailbox = Mailbox()
    mailbox.start()
    try:
        yield mailbox
    finally:
        mailbox.stop()


@dataclass
class Push:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops connections of a concurrent sender
    daemon_threads = True


@dataclass
class PushReceiver:
    """A loopback push service: keeps every POST, answers ``status[path]`` (default 201), or 503 while
    ``unavailable[path]`` (how many more times) is above 0."""

    port: int = field(default_factory=free_port)
    received: list[Push] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def endpoint(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/push/{name}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    status = receiver.status.get(self.path, 201)
                    if receiver.unavailable.get(self.path, 0) > 0:
                        receiver.unavailable[self.path] -= 1
                        status = 503
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.received.append(Push(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def to(self, name: str) -> list[Push]:
        with self._lock:
            return [p for p in self.received if p.path == f"/push/{name}"]


@contextlib.contextmanager
def running_receiver() -> Iterator[PushReceiver]:
    receiver = PushReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


class BrowserKeys:
    """A browser's subscription keys: what it gives the server, and what it decrypts with."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    def subscription(self, endpoint: str) -> dict[str, Any]:
        """A ``PushSubscription.toJSON()`` object."""
        public = self.private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)},
        }

    def decrypt(self, body: bytes) -> bytes:
        plain: bytes = http_ece.decrypt(
            body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
        )
        return plain


def verify_vapid(authorization: str, public_key: str, audience: str) -> dict[str, Any]:
    """Check ``Authorization: vapid t=<jwt>,k=<key>``: the key is ours and the JWT is signed by it (ES256)."""
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid", authorization
    parts = dict(item.split("=", 1) for item in params.split(","))
    assert parts["k"] == public_key
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(public_key))
    claims: dict[str, Any] = jwt.decode(parts["t"], point, algorithms=["ES256"], audience=audience)
    return claims


async def user_with_email(
    watcher: Watcher, db: asyncpg.Connection, *, domain: str = "mail.test", **profile: str
) -> tuple[str, str]:
    """A fresh user whose ``user.profile`` event (an address at ``domain``, and ``profile``) is stored;
    (user, address)."""
    user = fresh_id()
    address = f"{user}@{domain}"
    await watcher.publish({"user_id": user, "email": address, **profile}, routing_key="user.profile")

    async def stored() -> bool:
        stored_address: str | None = await db.fetchval(
            "SELECT email FROM user_profiles WHERE user_id = $1", user
        )
        return stored_address == address

    await wait_until(stored, 30, "profile stored")
    return user, address


async def end_the_wait(db: asyncpg.Connection, *users: str) -> None:
    """Make the waiting (delayed) jobs of ``users`` due now. Tests delay jobs by minutes, so that they
    surely still wait however slow the machine, and end the wait with this when the test is ready."""
    await db.execute(
        "UPDATE delivery_jobs SET due_at = now() WHERE user_id = ANY($1) AND status = 'scheduled'", users
    )


def job_message(
    notification_id: str, user: str, channel: str = "email", *, title: str = "t", version: int | None = None
) -> Job:
    """The job a worker publishes for ``user``'s notification on ``channel``; with ``version``, the job of
    that version of a collapsed notification (keyed, as such jobs are)."""
    key = f"{notification_id}:{user}:{channel}"
    notification = {
        "id": notification_id,
        "type": "INSTRUCTOR_MESSAGE",
        "category": "social",
        "title": title,
        "message": "",
        "data": {},
        "created_at": datetime.now(UTC).isoformat(),
    }
    return Job(
        id=key if version in (None, 1) else f"{key}:{version}",
        notification_id=notification_id,
        user_id=user,
        channel=channel,
        notification=orjson.dumps(notification).decode(),
        type="INSTRUCTOR_MESSAGE",
        created_at=datetime.now(UTC),
        deliver_after=None,
        job_key=None if version is None else key,
        version=version,
    )


def web_push_sender(
    pool: asyncpg.Pool,
    *,
    timeout: float = 10.0,
    max_connections: int = 4,
    hosts: tuple[str, ...] = ("127.0.0.1",),
    allow_local: bool = True,
) -> WebPushSender:
    """A Web Push sender with a fresh VAPID key, for tests that send through it directly; by default it
    posts to loopback receivers (``HERALD_PUSH_HOSTS=127.0.0.1``, ``HERALD_PUSH_ALLOW_HTTP=true``)."""
    return WebPushSender(
        load_vapid(new_key_pair()[0]),
        subject="mailto:ops@herald.test",
        ttl=60,
        timeout=timeout,
        max_connections=max_connections,
        pool=pool,
        is_critical=lambda _: False,
        hosts=hosts,
        allow_local=allow_local,
    )
