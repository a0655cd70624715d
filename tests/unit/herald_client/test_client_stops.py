"""The Python client stops cleanly instead of hanging or leaking (herald_client/client.py, calls.py).

No gateway is needed: an unusable proxy from the environment, a port nothing listens on, and a reply
frame handed to the pending calls directly.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pytest

from herald_client.calls import PendingCalls
from herald_client.client import HeraldClient, HeraldClosedError, HeraldRequestError
from herald_client.protocol import ErrorCode
from herald_ops.testing.stack import free_port, wait_until

#: A deadline for what must end on its own; a client that hangs fails the test instead of the run.
DEADLINE = 10.0


def dead_url() -> str:
    return f"ws://127.0.0.1:{free_port()}/notifications"  # refused: nothing listens there


@pytest.mark.skipif(
    importlib.util.find_spec("python_socks") is not None, reason="python-socks makes the proxy usable"
)
async def test_an_unexpected_error_in_the_connection_loop_stops_start_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """websockets raises ImportError for a SOCKS proxy when python-socks is missing: a failure no retry
    can fix, which used to end the runner task silently and leave start() waiting forever."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "socks5h://127.0.0.1:1080")
    client = HeraldClient(dead_url(), lambda: "a.b.c")
    async with asyncio.timeout(DEADLINE):
        with pytest.raises(HeraldClosedError, match="python-socks") as stopped:
            await client.start()
    assert stopped.value.reason.startswith("ImportError")
    assert client.state == "closed"
    assert client.close_reason == stopped.value.reason


async def test_a_start_that_times_out_closes_the_client() -> None:
    """``__aexit__`` does not run when ``__aenter__`` fails: the client must not keep reconnecting."""
    client = HeraldClient(dead_url(), lambda: "a.b.c", backoff_base=0.01, backoff_max=0.05)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5), client:
            pytest.fail("the client connected to a port nothing listens on")
    assert client.state == "closed"
    assert client._runner is not None
    assert client._runner.done()  # no task left that could connect again


async def test_a_cancelled_start_closes_the_client() -> None:
    client = HeraldClient(dead_url(), lambda: "a.b.c", backoff_base=0.01, backoff_max=0.05)
    starting = asyncio.create_task(client.start())
    await wait_until(lambda: client.state == "reconnecting", DEADLINE, "a refused attempt")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert client.state == "closed"
    assert client._runner is not None
    assert client._runner.done()


class RecordingSocket:
    """What :meth:`PendingCalls.call` needs of a WebSocket: ``send``."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)


@pytest.mark.parametrize("code", ["oops", None, 1.5, True, [4003]])
async def test_an_error_reply_with_a_code_that_is_no_integer_fails_only_its_call(code: Any) -> None:
    calls, socket = PendingCalls(), RecordingSocket()
    call = asyncio.create_task(calls.call(socket, "ping", {}, DEADLINE))  # type: ignore[arg-type]
    await wait_until(lambda: bool(socket.sent), DEADLINE, "the request sent")
    calls.settle({"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": "nope", "data": {"x": 1}}})
    with pytest.raises(HeraldRequestError) as refused:
        await call
    assert refused.value.code == ErrorCode.INTERNAL_ERROR
    assert repr(code) in refused.value.message
    assert "nope" in refused.value.message
    assert refused.value.data == {"x": 1}


async def test_an_error_reply_keeps_its_integer_code() -> None:
    calls, socket = PendingCalls(), RecordingSocket()
    call = asyncio.create_task(calls.call(socket, "ping", {}, DEADLINE))  # type: ignore[arg-type]
    await wait_until(lambda: bool(socket.sent), DEADLINE, "the request sent")
    calls.settle({"jsonrpc": "2.0", "id": 1, "error": {"code": 4003, "message": "forbidden"}})
    with pytest.raises(HeraldRequestError) as refused:
        await call
    assert (refused.value.code, refused.value.message) == (4003, "forbidden")
