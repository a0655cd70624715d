"""deploy/haproxy.cfg in front of two real gateways and an HTTP API: WebSockets pass, both gateways get
clients, a stopped gateway leaves the rotation so new clients land on the other one, and ``/api/`` reaches
herald-api.

The configuration is the compose one with only addresses changed (loopback ports instead of the compose
service names) and ``maxconn`` lowered for a test process. ``make test`` installs ``haproxy`` first
(``.ci/install-test-deps``).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from typing import TYPE_CHECKING

import aio_pika
import httpx
import pytest

from herald_ops.testing.gateway import open_client, publish_user, recv_json, wait_closed
from herald_ops.testing.stack import ROOT, free_port, fresh_id, http_get, mint, wait_until
from shared.jsonrpc import notification_frame

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from herald_ops.testing.stack import HeraldProcess, Stack


def connections(gateway: HeraldProcess) -> float:
    _, body = http_get(f"{gateway.url}/metrics")
    match = re.search(rb"^herald_gateway_connections (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else -1.0


@pytest.fixture
def balancer(tmp_path: Path, fresh_stack: Stack) -> Iterator[tuple[str, list[HeraldProcess]]]:
    """Two gateways and an api (and a worker) behind HAProxy; yields the balancer's base URL and the
    gateways. The config's second api server stays unresolvable, so HAProxy keeps it disabled."""
    fresh_stack.start_worker()
    gateways = [fresh_stack.start_gateway() for _ in range(2)]
    api = fresh_stack.start_api()
    port = free_port()
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    config = config.replace("bind :8080", f"bind 127.0.0.1:{port}").replace("maxconn 50000", "maxconn 500")
    for n, gateway in enumerate(gateways, start=1):
        config = config.replace(f"gateway-{n}:8765", f"127.0.0.1:{gateway.port}")
    config = config.replace("api-1:8767", f"127.0.0.1:{api.port}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    # The access log goes to stdout (the compose setup): kept in a file the tests can read.
    log = (tmp_path / "haproxy.log").open("wb")
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(path)], stdout=log, stderr=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}", gateways
    finally:
        proxy.terminate()
        proxy.wait(10)
        log.close()


async def test_websockets_through_haproxy_spread_and_fail_over(
    balancer: tuple[str, list[HeraldProcess]], fresh_stack: Stack
) -> None:
    address, gateways = balancer
    await wait_until(lambda: http_get(f"http://{address}/readyz")[0] == 200, 20, "HAProxy routes")
    status, page = http_get(f"http://{address}/")
    assert status == 200
    assert b"<html" in page.lower()
    api_user = fresh_id("lb-api")

    def api_answers() -> bool:
        count = httpx.get(
            f"http://{address}/api/notifications/realtime/unread-count",
            headers={"Authorization": f"Bearer {mint(api_user)}"},
        )
        return count.status_code == 200 and count.json()["count"] == 0

    await wait_until(api_answers, 20, "HAProxy routes /api/ to herald-api")

    class Via:
        """Looks like a HeraldProcess to open_client, but points at the balancer."""

        ws_url = f"ws://{address}/notifications"

    user = f"lb-{fresh_stack.name[-6:]}"
    sockets = [(await open_client(Via(), user))[0] for _ in range(6)]  # type: ignore[arg-type]
    try:
        # leastconn spreads the six connections over both gateways.
        await wait_until(lambda: connections(gateways[0]) + connections(gateways[1]) == 6, 10, "6 counted")
        assert connections(gateways[0]) > 0
        assert connections(gateways[1]) > 0

        amqp = await aio_pika.connect(fresh_stack.amqp_url)
        try:
            channel = await amqp.channel()
            frame = notification_frame("notification:new", {"id": "lb-1", "seq": 1, "type": "NEW_COMMENT"})
            await publish_user(channel, user, frame)
        finally:
            await amqp.close()
        for ws in sockets:
            received = await recv_json(ws)
            assert received["params"]["id"] == "lb-1"

        # Stop gateway 1: its clients are told 1001, HAProxy's /readyz check takes it out of rotation.
        on_first = int(connections(gateways[0]))
        assert gateways[0].stop() == 0
        # Those on the other gateway stay open: their wait times out (an exception, not a close code).
        codes = await asyncio.gather(*(wait_closed(ws, 3) for ws in sockets), return_exceptions=True)
        assert sum(1 for code in codes if isinstance(code, tuple) and code[0] == 1001) == on_first

        async def connects() -> bool:
            try:
                ws, _ = await open_client(Via(), user)  # type: ignore[arg-type]
            except Exception:
                return False
            await ws.close()
            return True

        await wait_until(connects, 20, "a new client gets through to the remaining gateway")
        for _ in range(3):
            ws, params = await open_client(Via(), user)  # type: ignore[arg-type]
            assert params["user_id"] == user
            await ws.close()
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def test_haproxy_never_logs_the_token_of_a_query_string(
    balancer: tuple[str, list[HeraldProcess]], tmp_path: Path
) -> None:
    """Browsers can only pass a WebSocket token as ``?token=``: the access log keeps the path, not the
    query, so credentials never reach log storage."""
    address, _ = balancer
    secret = "do-not-log-this-token"
    await wait_until(lambda: http_get(f"http://{address}/healthz")[0] == 200, 20, "balancer up")
    status, _ = http_get(f"http://{address}/healthz?token={secret}")
    assert status == 200
    log = tmp_path / "haproxy.log"
    await wait_until(lambda: "/healthz" in log.read_text(errors="replace"), 10, "the request logged")
    assert secret not in log.read_text(errors="replace")
