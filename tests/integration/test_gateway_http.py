"""What real gateway processes serve over HTTP besides health and metrics: the WebSocket handshakes
they refuse (bad token, wrong path, foreign origin, repeated headers) and the ones they accept, the
static files, the demo and the browser client (and nothing outside them), and dev tokens minted only when
enabled and only for a loopback Host. With the fixtures of ``test_gateway``.
"""

from __future__ import annotations

import asyncio
import http.client
import re
from typing import TYPE_CHECKING

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.http import WS_PATH
from herald_ops.testing.gateway import Responder, call, open_client, recv_json
from herald_ops.testing.stack import ROOT, fresh_id, http_get, mint
from tests.integration import test_gateway

if TYPE_CHECKING:
    from herald_ops.testing.stack import HeraldProcess, Stack

# test_gateway's fixtures, under their names: one stack, a responder for the workers, two gateways.
gw_stack, responder, gateways = test_gateway.gw_stack, test_gateway.responder, test_gateway.gateways


async def test_handshake_refusals(gateways: tuple[HeraldProcess, HeraldProcess]) -> None:
    gw = gateways[0]
    good = mint(fresh_id())
    refusals = [
        (f"{gw.ws_url}?token=garbage", {}, 401),
        (gw.ws_url, {"additional_headers": {"Authorization": "Bearer garbage"}}, 401),
        (f"ws://127.0.0.1:{gw.port}/elsewhere?token={good}", {}, 404),
        (f"{gw.ws_url}?token={good}", {"origin": "https://evil.example"}, 403),
        (f"{gw.ws_url}?token={good}", {"additional_headers": {"Origin": "http://["}}, 403),  # not a 500
    ]
    for url, kwargs, status in refusals:
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, **kwargs)
        assert refused.value.response.status_code == status, url
    # Same-origin pages and the Authorization header are fine.
    async with connect(
        gw.ws_url,
        origin=f"http://127.0.0.1:{gw.port}",
        additional_headers={"Authorization": f"Bearer {good}"},
    ) as ws:
        assert (await recv_json(ws))["method"] == "connected"


HANDSHAKE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


async def test_a_repeated_host_origin_upgrade_or_authorization_is_refused_not_a_500(
    gateways: tuple[HeraldProcess, HeraldProcess],
) -> None:
    """websockets' ``Headers.get`` raises on a repeated name: these were 500s with a logged traceback."""
    gw = gateways[0]
    host = ("Host", f"127.0.0.1:{gw.port}")
    same_origin = ("Origin", f"http://127.0.0.1:{gw.port}")
    cases = [
        ("/healthz", [host, host], 400, "Host"),
        (WS_PATH, [host, *HANDSHAKE, same_origin, ("Origin", "https://evil.example")], 400, "Origin"),
        (WS_PATH, [host, *HANDSHAKE, ("Upgrade", "websocket")], 400, "Upgrade"),
        (
            WS_PATH,
            [
                host,
                *HANDSHAKE,
                ("Authorization", f"Bearer {mint(fresh_id())}"),
                ("Authorization", "Bearer x"),
            ],
            401,
            "Authorization",
        ),
    ]
    for path, headers, status, repeated in cases:
        head, body = await raw_get(gw.port, path, headers)
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), (repeated, head)
        assert f"{repeated} header given more than once".encode() in body, (repeated, body)
    assert "process_request failed" not in gw.logs()


async def raw_get(port: int, path: str, headers: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    """The head and body of the answer to a ``GET`` with exactly ``headers`` (repeats included)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers), "", ""]
        writer.write("\r\n".join(request).encode())
        async with asyncio.timeout(10):
            answer = await reader.read()  # a refused request is answered with Connection: close
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_static_files_and_the_browser_client_are_served(
    gateways: tuple[HeraldProcess, HeraldProcess],
) -> None:
    gw = gateways[0]
    plain = (ROOT / "gateway" / "static" / "plain.html").read_bytes()
    demo = ROOT / "clients" / "demo" / "dist"
    status, body = http_get(f"{gw.url}/")
    assert status == 200
    if (demo / "index.html").is_file():  # the React demo, built by .ci/build-clients
        assert body == (demo / "index.html").read_bytes()
        bundle = re.search(rb'src="(/assets/[^"]+[.]js)"', body)
        assert bundle is not None, body
        assert (
            http_get(f"{gw.url}{bundle.group(1).decode()}")[1]
            == (demo / bundle.group(1).decode()[1:]).read_bytes()
        )
    else:  # not built: the plain page stands in
        assert body == plain
    assert http_get(f"{gw.url}/plain.html")[1] == plain
    assert http_get(f"{gw.url}/static/plain.html")[1] == plain
    assert http_get(f"{gw.url}/assets/../../../pyproject.toml")[0] == 404
    client = ROOT / "clients" / "js"
    # Every module of the package (so every import of herald.js resolves from a gateway), byte for byte.
    modules = sorted(
        path.relative_to(client).as_posix() for path in client.glob("**/*.js") if "test" not in path.parts
    )
    assert "lib/client.js" in modules
    for module in modules:
        assert http_get(f"{gw.url}/client/{module}")[1] == (client / module).read_bytes(), module
    assert http_get(f"{gw.url}/client/herald.d.ts")[0] == 200
    assert http_get(f"{gw.url}/client/package.json")[0] == 404  # only the package's own files
    assert http_get(f"{gw.url}/client/test/units.test.mjs")[0] == 404


async def test_dev_tokens_are_minted_only_when_enabled(gw_stack: Stack, responder: Responder) -> None:
    gw = gw_stack.start_gateway(dev_tokens=1)
    try:
        assert "HERALD_DEV_TOKENS=1" in gw.logs()  # the loud warning
        status, body = http_get(f"{gw.url}/dev/token?user=dev-user&admin=1")
        assert status == 200
        minted = orjson.loads(body)
        assert (minted["user_id"], minted["admin"]) == ("dev-user", True)
        ws, params = await open_client(gw, jwt=minted["token"])
        assert params["user_id"] == "dev-user"
        reply = await call(ws, "notifications.unread_count")
        assert reply["result"]["echo"]["admin"] is True
        await ws.close()
        assert http_get(f"{gw.url}/dev/token?user=not%20valid")[0] == 400
        # Only a loopback Host: a page on another name that resolves to 127.0.0.1 (DNS rebinding) or a
        # proxy in front of the gateway gets nothing.
        for host, expected in [
            ("evil.example", 404),
            ("evil.example:80", 404),
            ("127.0.0.1.evil.example", 404),
            (f"localhost:{gw.port}", 200),
            (f"[::1]:{gw.port}", 200),
        ]:
            assert get_with_host(gw.port, "/dev/token?user=u1", host) == expected, host
    finally:
        await asyncio.to_thread(gw.stop)


def get_with_host(port: int, path: str, host: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()
