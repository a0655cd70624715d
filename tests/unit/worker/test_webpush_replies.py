"""A push service's reply is bounded: in time for the whole request (not per read), and in how much of its
body is read. Against a loopback HTTP server that answers with a script: it trickles, never ends its body,
or sends a gzip bomb."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from typing import TYPE_CHECKING, Any

import pytest

from herald_ops.testing.delivery import BrowserKeys, web_push_sender
from herald_ops.testing.stack import wait_until
from worker.delivery.jobs import Outcome
from worker.store import push as store
from worker.store.deliveries import Claimed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import asyncpg

TIMEOUT = 1.0  # HERALD_PUSH_TIMEOUT of these tests; each trickle is well within it, per read
TRICKLE = 0.1  # seconds between two bytes of a trickling reply


class ScriptedService:
    """A loopback push service: reads each request (head and body), then runs the script on the writer."""

    def __init__(self, script: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.script = script
        self.requests: list[dict[str, str]] = []  # each request's headers, lower-cased names
        self.trickled = 0  # bytes sent by trickle()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[1:]
            headers = {
                name.lower(): value.strip() for name, _, value in (h.partition(":") for h in head if h)
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(headers)
            await self.script(writer)
        writer.close()

    async def trickle(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write ``data`` byte by byte, then go on with one more every ``TRICKLE`` seconds, for ever."""
        while True:
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                self.trickled += 1
                await asyncio.sleep(TRICKLE)

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/push/device"


@contextlib.asynccontextmanager
async def service(
    script: Callable[[ScriptedService, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[ScriptedService]:
    scripted = ScriptedService(lambda writer: script(scripted, writer))
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    scripted.port = server.sockets[0].getsockname()[1]
    try:
        yield scripted
    finally:
        server.close()


async def send(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Outcome:
    """A push job to one device at ``endpoint`` through a real sender; waits (with a deadline, not a timed
    assertion) for the send to end."""
    keys = BrowserKeys().subscription(endpoint)["keys"]
    device = store.Subscription("device", endpoint, keys["p256dh"], keys["auth"])

    async def targets(*args: Any) -> store.Targets:
        return store.Targets([device], [])

    async def record(*args: Any) -> None:
        pass

    async def pace(requests: int) -> None:
        pass

    monkeypatch.setattr(store, "targets", targets)
    monkeypatch.setattr(store, "record_receipts", record)
    pool: asyncpg.Pool = None  # type: ignore[assignment]  # every query is replaced above
    sender = web_push_sender(pool, timeout=TIMEOUT, max_connections=2)
    notification = {"id": "n1", "type": "GRADE_RELEASED", "title": "t", "message": "m"}
    task = asyncio.create_task(
        sender.send(Claimed("j1", "u1", "push", notification, 1, False, None, {}, 1), pace)
    )
    try:
        await wait_until(task.done, 30, "the push send to end")
        return task.result()
    finally:
        task.cancel()
        await sender.close()


async def test_a_reply_that_trickles_its_head_ends_as_a_retry_naming_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A byte every 0.1 s never lets httpx's per-read timeout (1 s) fire: the POST stayed open for ever,
    # renewing the job's lease and holding a connection of the pool, until the pool was full.
    async def script(scripted: ScriptedService, writer: asyncio.StreamWriter) -> None:
        await scripted.trickle(writer, b"HTTP/1.1 201 Created\r\nX-Slow: " + b"z" * 1000)

    async with service(script) as scripted:
        outcome = await send(scripted.endpoint(), monkeypatch)
        assert scripted.trickled > 0  # the reply was under way, and never finished
    assert outcome == Outcome.transient("push device: timed out, no reply in 1 s")


async def test_a_reply_whose_body_trickles_is_classed_by_its_status(monkeypatch: pytest.MonkeyPatch) -> None:
    # The push service accepted the push (201): a retry would show it twice; the body is not waited for.
    async def script(scripted: ScriptedService, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n")
        await scripted.trickle(writer, b"1\r\nx\r\n")

    async with service(script) as scripted:
        outcome = await send(scripted.endpoint(), monkeypatch)
        assert scripted.trickled > 0
    assert outcome == Outcome.sent()


async def test_only_the_start_of_an_endless_error_body_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 KiB at once, then nothing more and no end: httpx read the body to its end (a read timeout, so a
    # retry); now the error text is the start of the body and the status classes the outcome.
    async def script(scripted: ScriptedService, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 4096)
        await writer.drain()
        await asyncio.Event().wait()

    async with service(script) as scripted:
        outcome = await send(scripted.endpoint(), monkeypatch)
    assert outcome == Outcome.permanent("push 400: " + "x" * 200)


@pytest.mark.parametrize(("status", "expected"), [(400, "failed"), (503, "retry"), (201, "sent")])
async def test_a_gzip_bomb_reply_is_neither_asked_for_nor_decoded(
    monkeypatch: pytest.MonkeyPatch, status: int, expected: str
) -> None:
    # 16 MiB of "A" in 16 KB: httpx asked for gzip and decoded the whole body into memory (a 407 KB
    # bomb took herald-delivery from 459 to 881 MiB) for 200 characters of error text.
    bomb = gzip.compress(b"A" * (16 << 20), 9)

    async def script(scripted: ScriptedService, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 {status} Whatever\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
        writer.write(head.encode() + bomb)
        await writer.drain()

    async with service(script) as scripted:
        outcome = await send(scripted.endpoint(), monkeypatch)
    assert [request["accept-encoding"] for request in scripted.requests] == ["identity"]
    assert outcome.status == expected
    if expected != "sent":
        assert outcome.error == f"push {status}: (a gzip-encoded body, not read)"
