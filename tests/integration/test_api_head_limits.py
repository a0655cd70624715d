"""``herald-api`` bounds a request's head where it enters: past ``HERALD_API_MAX_HEAD_BYTES`` the client
gets 431, past ``HERALD_API_HEAD_TIMEOUT`` 408, and the connection is closed; the process serves on.
Raw sockets against a real ``herald-api`` process (no worker is needed for ``/healthz``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import httpx
import pytest

from herald_ops.testing.stack import stack_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess

pytestmark = pytest.mark.timeout(120)

MAX_HEAD = 4096


@pytest.fixture(scope="module")
def api() -> Iterator[HeraldProcess]:
    with stack_context() as stack:
        yield stack.start_api(api_max_head_bytes=MAX_HEAD, api_head_timeout=1.0)


@contextlib.asynccontextmanager
async def raw(api: HeraldProcess) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a deadline far above the test's)."""
    async with asyncio.timeout(30):
        with contextlib.suppress(ConnectionResetError):
            return await reader.read()
    return b""


def healthy(api: HeraldProcess) -> bool:
    return httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200


async def test_a_head_over_the_cap_gets_431_and_the_connection_closes(api: HeraldProcess) -> None:
    async with raw(api) as (reader, writer):
        # A header that has not ended past the cap: buffered without one, it could grow the process without
        # bound. No more is sent than the server reads, so its close is a clean one the answer survives.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Padding: " + b"a" * (MAX_HEAD + 1024))
        answer = await until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert healthy(api)


async def test_a_head_that_never_completes_gets_408_and_the_connection_closes(api: HeraldProcess) -> None:
    async with raw(api) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")  # and then nothing (slowloris)
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 ")
    async with raw(api) as (reader, _):  # nothing at all
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 ")
    assert healthy(api)


async def test_heads_under_the_cap_keep_alive_and_pipelined_requests_are_served(api: HeraldProcess) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Padding: " + b"a" * (MAX_HEAD - 200) + b"\r\n\r\n"
    async with raw(api) as (reader, writer):
        for _ in range(3):  # one keep-alive connection, one request after the other
            writer.write(request)
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
        # Two requests in one write: the second's head is complete before the first is answered, so
        # no deadline runs for it while it waits.
        writer.write(request + request.replace(b"Host: api", b"Host: api\r\nConnection: close"))
        answer = await until_closed(reader)
    assert answer.count(b"HTTP/1.1 200 ") == 2
