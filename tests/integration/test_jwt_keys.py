"""JWKS keys against a real gateway: a removed key stops verifying within the key-set lifetime, a failed
fetch starts the cool-down, and a token whose algorithm does not fit its key is a clean 401 / 4401."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from herald_ops.testing.gateway import Responder, recv_json, wait_closed
from herald_ops.testing.jwks import JwksServer, rsa_jwk
from herald_ops.testing.stack import fresh_id, stack_context, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def token(kid: str, key: Any = KEY, algorithm: str = "RS256") -> str:
    now = int(time.time())
    claims = {"sub": fresh_id(), "iat": now, "exp": now + 600}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


async def handshake_status(gateway: HeraldProcess, credential: str) -> int:
    """101 when the handshake is accepted (and ``connected`` arrives), else the HTTP status."""
    try:
        ws = await connect(f"{gateway.ws_url}?token={credential}")
    except InvalidStatus as refused:
        return refused.response.status_code
    async with ws:
        assert (await recv_json(ws))["method"] == "connected"
    return 101


@pytest.fixture(scope="module")
def keys_stack() -> Iterator[Stack]:
    with stack_context("herald_jwks") as created:
        yield created


@pytest.fixture(scope="module")
async def responder(keys_stack: Stack) -> AsyncIterator[Responder]:
    started = Responder(keys_stack.amqp_url)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer([rsa_jwk(KEY, "k1")])
    yield server
    server.close()


def start(stack: Stack, jwks: JwksServer, **overrides: Any) -> HeraldProcess:
    settings: dict[str, Any] = {
        "jwt_secret": "",
        "jwt_jwks_url": jwks.url,
        "jwt_jwks_allow_http": "true",
        "jwt_algorithms": "RS256,ES256",
        **overrides,
    }
    return stack.start_gateway(**settings)


async def test_a_key_removed_from_the_jwks_stops_verifying_within_the_key_set_lifetime(
    keys_stack: Stack, responder: Responder, jwks: JwksServer
) -> None:
    gateway = start(keys_stack, jwks, jwt_jwks_lifespan=1, jwt_jwks_cooldown=0)
    try:
        assert await handshake_status(gateway, token("k1")) == 101
        jwks.keys = [rsa_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "k2")]

        async def refused() -> bool:
            return await handshake_status(gateway, token("k1")) == 401

        await wait_until(refused, 30, "the removed key refused")
    finally:
        gateway.stop()


async def test_a_failed_jwks_fetch_starts_the_cooldown(
    keys_stack: Stack, responder: Responder, jwks: JwksServer
) -> None:
    gateway = start(keys_stack, jwks, jwt_jwks_cooldown=60)
    try:
        jwks.status = 503
        statuses = [await handshake_status(gateway, token(f"junk-{n}")) for n in range(50)]
        assert statuses == [401] * 50
        assert jwks.fetches == 1
    finally:
        gateway.stop()


async def test_a_token_whose_algorithm_does_not_fit_its_key_is_a_clean_401_and_4401(
    keys_stack: Stack, responder: Responder, jwks: JwksServer
) -> None:
    gateway = start(keys_stack, jwks)
    try:
        mismatched = token("k1", EC_KEY, "ES256")  # ES256 checked against the RSA key k1
        assert await handshake_status(gateway, mismatched) == 401
        async with connect(gateway.ws_url) as ws:
            await ws.send(
                orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "auth", "params": {"token": mismatched}})
            )
            assert (await recv_json(ws))["error"]["code"] == 4401
            code, _ = await wait_closed(ws)
            assert code == 4401
        assert await handshake_status(gateway, token("k1")) == 101
        assert "Traceback" not in gateway.logs()
    finally:
        gateway.stop()


async def test_a_gateway_with_keys_but_no_audience_warns_at_start(
    keys_stack: Stack, responder: Responder, jwks: JwksServer
) -> None:
    gateway = start(keys_stack, jwks)
    try:
        await wait_until(lambda: "HERALD_JWT_AUDIENCE" in gateway.logs(), 10, "the audience warning")
        line = next(line for line in gateway.logs().splitlines() if "HERALD_JWT_AUDIENCE" in line)
        assert orjson.loads(line)["level"] == "warning"
    finally:
        gateway.stop()
