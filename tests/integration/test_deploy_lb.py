"""deploy/haproxy.cfg in front of two real gateways and two HTTP APIs: WebSockets pass, both gateways get
clients, a stopped gateway leaves the rotation so new clients land on the other one, ``/api/`` reaches
herald-api, and while an API and a gateway stop under load not one request or upgrade fails (they close
their listener before HAProxy's checks notice: ``option redispatch`` retries on the other server).

The configuration is the compose one with only addresses changed (loopback ports instead of the compose
service names) and ``maxconn`` lowered for a test process. ``make test`` installs ``haproxy`` first
(``.ci/install-test-deps``).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

import aio_pika
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from herald_ops.testing.gateway import open_client, publish_user, recv_json, wait_closed
from herald_ops.testing.stack import ROOT, free_port, fresh_id, http_get, mint, wait_until
from shared.jsonrpc import notification_frame

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from herald_ops.testing.stack import HeraldProcess, Stack


class Balancer(NamedTuple):
    address: str
    gateways: list[HeraldProcess]
    apis: list[HeraldProcess]
    log: Path


class Via:
    """Looks like a HeraldProcess to open_client, but points at the balancer."""

    def __init__(self, address: str) -> None:
        self.ws_url = f"ws://{address}/notifications"


def connections(gateway: HeraldProcess) -> float:
    _, body = http_get(f"{gateway.url}/metrics")
    match = re.search(rb"^herald_gateway_connections (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else -1.0


@pytest.fixture
def balancer(tmp_path: Path, fresh_stack: Stack) -> Iterator[Balancer]:
    """Two gateways and two apis (and a worker) behind HAProxy."""
    fresh_stack.start_worker()
    gateways = [fresh_stack.start_gateway() for _ in range(2)]
    apis = [fresh_stack.start_api() for _ in range(2)]
    port = free_port()
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    config = config.replace("bind :8080", f"bind 127.0.0.1:{port}").replace("maxconn 50000", "maxconn 500")
    for n, gateway in enumerate(gateways, start=1):
        config = config.replace(f"gateway-{n}:8765", f"127.0.0.1:{gateway.port}")
    for n, api in enumerate(apis, start=1):
        config = config.replace(f"api-{n}:8767", f"127.0.0.1:{api.port}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    # The access log goes to stdout (the compose setup): kept in a file the tests can read.
    log = (tmp_path / "haproxy.log").open("wb")
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(path)], stdout=log, stderr=subprocess.DEVNULL)
    try:
        yield Balancer(f"127.0.0.1:{port}", gateways, apis, tmp_path / "haproxy.log")
    finally:
        proxy.terminate()
        proxy.wait(10)
        log.close()


async def test_websockets_through_haproxy_spread_and_fail_over(
    balancer: Balancer, fresh_stack: Stack
) -> None:
    address, gateways = balancer.address, balancer.gateways
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

    user = f"lb-{fresh_stack.name[-6:]}"
    sockets = [(await open_client(Via(address), user))[0] for _ in range(6)]  # type: ignore[arg-type]
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

        # New clients land on gateway 2 (the window before the checks notice: the test below).
        for _ in range(3):
            ws, params = await open_client(Via(address), user)  # type: ignore[arg-type]
            assert params["user_id"] == user
            await ws.close()
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def test_haproxy_never_logs_the_token_of_a_query_string(balancer: Balancer) -> None:
    """Browsers can only pass a WebSocket token as ``?token=``: the access log keeps the path, not the
    query, so credentials never reach log storage."""
    address = balancer.address
    secret = "do-not-log-this-token"
    await wait_until(lambda: http_get(f"http://{address}/healthz")[0] == 200, 20, "balancer up")
    status, _ = http_get(f"http://{address}/healthz?token={secret}")
    assert status == 200
    log = balancer.log
    await wait_until(lambda: "/healthz" in log.read_text(errors="replace"), 10, "the request logged")
    assert secret not in log.read_text(errors="replace")


async def test_stopping_an_api_and_a_gateway_under_load_fails_no_request_or_upgrade(
    balancer: Balancer,
) -> None:
    """On SIGTERM herald-api and the gateway close their listener at once, seconds before HAProxy's
    /readyz checks take them out: a request or upgrade routed to one in that window is refused and must be
    retried on the other server. Concurrent API requests and WebSocket connects run without pause from
    before the stops until HAProxy has marked both stopped servers DOWN; every one must succeed."""
    address, log = balancer.address, balancer.log
    url = f"http://{address}/api/notifications/realtime/unread-count"
    outcomes: Counter[str] = Counter()
    upgrades: Counter[str] = Counter()
    done = asyncio.Event()

    async def requests(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            try:
                response = await client.get(url, headers={"Authorization": f"Bearer {mint(fresh_id('lb'))}"})
                outcomes[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                outcomes[type(exc).__name__] += 1

    async def connects() -> None:
        while not done.is_set():
            try:
                ws = await connect(
                    f"ws://{address}/notifications?token={mint(fresh_id('lb'))}", compression=None
                )
            except Exception as exc:  # any failure to upgrade is what is counted
                upgrades[type(exc).__name__] += 1
                continue
            try:
                upgrades[(await recv_json(ws))["method"]] += 1
            except ConnectionClosed as exc:
                # Upgraded by the gateway just as it stopped: told to go away like its other clients.
                upgrades[f"closed {exc.rcvd.code if exc.rcvd else None}"] += 1
            except Exception as exc:
                upgrades[type(exc).__name__] += 1
            finally:
                await ws.close()

    def logged() -> str:
        return log.read_text(errors="replace")

    await wait_until(lambda: http_get(f"http://{address}/healthz")[0] == 200, 20, "balancer up")
    # One request per client connection, as the upgrades are: HAProxy sends each on a server connection
    # of its own (http-reuse safe), so each meets the stopping server's listener as a new client would.
    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        load = [asyncio.create_task(requests(client)) for _ in range(8)]
        load += [asyncio.create_task(connects()) for _ in range(4)]
        try:
            # Both apis and both gateways in rotation: each has served (the access log names the server).
            await wait_until(
                lambda: all(f" {server} " in logged() for server in ("apis/api-1", "apis/api-2")),
                20,
                "both apis serve",
            )
            await wait_until(
                lambda: all(
                    f" {server} " in logged() for server in ("gateways/gateway-1", "gateways/gateway-2")
                ),
                20,
                "both gateways serve",
            )
            api_code, gateway_code = await asyncio.gather(
                asyncio.to_thread(balancer.apis[0].stop), asyncio.to_thread(balancer.gateways[0].stop)
            )
            # uvicorn re-raises the SIGTERM it handled once the api has shut down cleanly.
            assert api_code in (0, -signal.SIGTERM)
            assert gateway_code == 0
            # The window closes when the checks mark them DOWN; the load runs on until then.
            await wait_until(
                lambda: all(
                    f"{server} is DOWN" in logged() for server in ("apis/api-1", "gateways/gateway-1")
                ),
                30,
                "HAProxy's checks take the stopped api and gateway out",
            )
        finally:
            done.set()
            await asyncio.gather(*load)

    assert set(outcomes) == {"200"}, outcomes
    # Every upgrade succeeds; one the stopping gateway accepted at its last moment is closed with 1001,
    # which clients answer by reconnecting (to the other gateway).
    assert upgrades["connected"] > 0, upgrades
    assert set(upgrades) <= {"connected", "closed 1001"}, upgrades
    # The window was exercised: a request and an upgrade were refused by the stopped server and
    # redispatched (%rc, the retry count, is "+N" when a retry went to another server).
    for backend in ("apis", "gateways"):
        assert re.search(rf" {backend}/\S+ .* \d+/\d+/\d+/\d+/\+\d+ ", logged()), backend
