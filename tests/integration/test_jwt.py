"""The JWT matrix (PROTOCOL §5) against real gateway processes.

One gateway verifies HS256 with the secret and RS256 with a PEM public key, with audience and issuer
configured; another takes RS256 keys from a local JWKS server. Every refused token is refused in the
handshake with HTTP 401; first-frame failures close with 4401; expiry mid-session closes with 4401 unless
``auth.refresh`` for the same user came first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from herald_ops.testing.gateway import Responder, call, recv_json, wait_closed
from herald_ops.testing.jwks import JwksServer, rsa_jwk
from herald_ops.testing.stack import TEST_JWT_SECRET, fresh_id, mint, stack_context, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack

AUDIENCE = "herald-test"
ISSUER = "https://auth.test"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


PRIVATE = _rsa()
PUBLIC_PEM = PRIVATE.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
ROTATED = _rsa()
STRANGER = _rsa()


def claims(sub: str | None = "jwt-user", ttl: float = 600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"iat": now, "exp": now + int(ttl), "aud": AUDIENCE, "iss": ISSUER}
    if sub is not None:
        body["sub"] = sub
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def hs256(payload: dict[str, Any], key: bytes | str = TEST_JWT_SECRET) -> str:
    return jwt.encode(payload, key, algorithm="HS256")


def rs256(payload: dict[str, Any], key: rsa.RSAPrivateKey = PRIVATE, kid: str | None = None) -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_signed_with_public_key(payload: dict[str, Any]) -> str:
    """The algorithm-confusion attack: HS256 whose HMAC key is the server's RSA public key (PEM).

    Built by hand because PyJWT refuses to use a PEM key as an HMAC secret.
    """
    header = orjson.dumps({"alg": "HS256", "typ": "JWT"})
    signing_input = f"{_b64(header)}.{_b64(orjson.dumps(payload))}"
    signature = hmac.new(PUBLIC_PEM, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.fixture(scope="module")
def jwt_stack() -> Iterator[Stack]:
    with stack_context("herald_jwt") as created:
        yield created


@pytest.fixture(scope="module")
async def responder(jwt_stack: Stack) -> AsyncIterator[Responder]:
    started = Responder(jwt_stack.amqp_url)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture(scope="module")
def keyed(jwt_stack: Stack, responder: Responder) -> HeraldProcess:
    """HS256 with the secret and RS256 with a PEM key; audience and issuer checked."""
    return jwt_stack.start_gateway(
        jwt_public_key=PUBLIC_PEM.decode(),
        jwt_algorithms="HS256,RS256",
        jwt_audience=AUDIENCE,
        jwt_issuer=ISSUER,
        auth_timeout=1,
    )


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    server = JwksServer([rsa_jwk(PRIVATE, "k1")])
    yield server
    server.close()


@pytest.fixture(scope="module")
def via_jwks(jwt_stack: Stack, responder: Responder, jwks: JwksServer) -> HeraldProcess:
    """RS256 only, keys from the JWKS server, no refetch cool-down (so rotation is testable)."""
    return jwt_stack.start_gateway(
        jwt_secret="",
        jwt_jwks_url=jwks.url,
        jwt_jwks_allow_http="true",
        jwt_algorithms="RS256",
        jwt_jwks_cooldown=0,
    )


async def accepted(gateway: HeraldProcess, credential: str) -> bool:
    """Whether a handshake with ``?token=credential`` is accepted (it then gets ``connected``)."""
    try:
        ws = await connect(f"{gateway.ws_url}?token={credential}")
    except InvalidStatus as refused:
        status = refused.response.status_code
        if status != 401:
            raise
        return False
    async with ws:
        frame = await recv_json(ws)
        assert frame["method"] == "connected"
        return True


def exp_in_milliseconds() -> str:
    """A common mistake: ``exp`` in milliseconds, a date after year 9999 that RFC 3339 cannot write."""
    return hs256(claims(exp=int(time.time() * 1000) + 600_000))


def auth_frame(token: str) -> str:
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "auth", "params": {"token": token}}).decode()


REFUSED_BY_KEYED: dict[str, Callable[[], str]] = {
    "alg none": lambda: jwt.encode(claims(), None, algorithm="none"),
    "HS256 signed with the RSA public key": lambda: hs256_signed_with_public_key(claims()),
    "no exp": lambda: hs256(claims(exp=None)),
    "exp in milliseconds": exp_in_milliseconds,
    "expired": lambda: hs256(claims(ttl=-60)),
    "future nbf": lambda: hs256(claims(nbf=int(time.time()) + 300)),
    "wrong aud": lambda: hs256(claims(aud="someone-else")),
    "no aud": lambda: hs256(claims(aud=None)),
    "wrong iss": lambda: hs256(claims(iss="https://evil.test")),
    "no sub": lambda: hs256(claims(sub=None)),
    "sub not a user id": lambda: hs256(claims(sub="has spaces/and slashes")),
    "bad HS signature": lambda: hs256(claims(), key="another-secret-that-is-long-enough-for-hs256"),
    "bad RS signature": lambda: rs256(claims(), key=STRANGER),
    "RS384 not in allowlist": lambda: jwt.encode(claims(), PRIVATE, algorithm="RS384"),
    "garbage": lambda: "not.a.jwt",
    "empty": lambda: "",
}


@pytest.mark.parametrize("case", sorted(REFUSED_BY_KEYED))
async def test_refused_in_the_handshake(keyed: HeraldProcess, case: str) -> None:
    assert not await accepted(keyed, REFUSED_BY_KEYED[case]())


async def test_accepted_hs256_and_rs256_via_pem(keyed: HeraldProcess) -> None:
    assert await accepted(keyed, hs256(claims()))
    assert await accepted(keyed, rs256(claims()))


async def test_jwks_accepts_known_kid_refuses_unknown_and_refetches_on_rotation(
    via_jwks: HeraldProcess, jwks: JwksServer
) -> None:
    plain = {k: v for k, v in claims().items() if k not in ("aud", "iss")}
    assert await accepted(via_jwks, rs256(plain, kid="k1"))
    assert await accepted(via_jwks, rs256(plain, kid="k1"))
    fetched = jwks.fetches
    assert fetched >= 1
    assert not await accepted(via_jwks, rs256(plain, key=STRANGER, kid="nobody"))
    assert not await accepted(via_jwks, hs256(plain))  # HS256 is not allowed on this gateway
    jwks.keys.append(rsa_jwk(ROTATED, "k2"))
    assert await accepted(via_jwks, rs256(plain, key=ROTATED, kid="k2"))  # unknown kid → refetch
    assert jwks.fetches > fetched
    settled = jwks.fetches
    assert await accepted(via_jwks, rs256(plain, key=ROTATED, kid="k2"))
    assert jwks.fetches == settled  # cached


async def first_frame(gateway: HeraldProcess, frame: str | None) -> tuple[dict[str, Any] | None, int | None]:
    """Connect without a token, send ``frame`` (or nothing); return the reply (if any) and the close code."""
    async with connect(gateway.ws_url) as ws:
        reply = None
        if frame is not None:
            await ws.send(frame)
            reply = await recv_json(ws)
        code, _ = await wait_closed(ws)
        return reply, code


async def test_first_frame_auth_accepts_a_good_token(keyed: HeraldProcess) -> None:
    async with connect(keyed.ws_url) as ws:
        await ws.send(auth_frame(hs256(claims())))
        reply = await recv_json(ws)
        assert reply["id"] == 1
        assert reply["result"]["user_id"] == "jwt-user"
        assert (await recv_json(ws))["method"] == "connected"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(auth_frame("garbage"), id="bad token"),
        pytest.param(auth_frame(exp_in_milliseconds()), id="exp in milliseconds"),  # once a 1011
        pytest.param('{"jsonrpc":"2.0","id":1,"method":"ping"}', id="not auth"),
        pytest.param("{not json", id="not json"),
        pytest.param(None, id="silence past auth_timeout"),
    ],
)
async def test_first_frame_failure_closes_4401(keyed: HeraldProcess, frame: str | None) -> None:
    reply, code = await first_frame(keyed, frame)
    assert code == 4401
    if frame is not None:
        assert reply is not None
        assert "error" in reply


async def test_expiry_mid_session_closes_4401(keyed: HeraldProcess) -> None:
    # Whole-second expiry: the token lives 4–5 s, room for the connect on a loaded machine.
    async with connect(f"{keyed.ws_url}?token={hs256(claims(ttl=5))}") as ws:
        assert (await recv_json(ws))["method"] == "connected"
        code, reason = await wait_closed(ws, timeout=30)
        assert (code, reason) == (4401, "token expired")


async def test_refresh_extends_the_session(keyed: HeraldProcess) -> None:
    first = claims(ttl=8)  # 7–8 s: room for the connect and the refresh on a loaded machine
    async with connect(f"{keyed.ws_url}?token={hs256(first)}") as ws:
        assert (await recv_json(ws))["method"] == "connected"
        reply = await call(ws, "auth.refresh", {"token": hs256(claims(ttl=600))})
        assert "expires_at" in reply["result"]
        await wait_until(lambda: time.time() > first["exp"] + 1, 30, "the first token's expiry has passed")
        assert (await call(ws, "ping"))["result"] == "pong"


async def test_refresh_for_another_user_is_an_error_and_keeps_the_connection(keyed: HeraldProcess) -> None:
    async with connect(f"{keyed.ws_url}?token={hs256(claims())}") as ws:
        assert (await recv_json(ws))["method"] == "connected"
        reply = await call(ws, "auth.refresh", {"token": hs256(claims(sub=fresh_id()))})
        assert reply["error"]["code"] == 4003
        for refused in (hs256(claims(ttl=-5)), exp_in_milliseconds()):  # the latter was once a 1011
            bad = await call(ws, "auth.refresh", {"token": refused})
            assert bad["error"]["code"] == -32602
            assert bad["error"]["data"] == "token"
        assert (await call(ws, "ping"))["result"] == "pong"


def test_dev_token_minting_helper_matches_gateway_rules() -> None:
    """The tokens the other tests mint carry exp and sub (sanity of the helper)."""
    decoded = jwt.decode(mint("u1"), TEST_JWT_SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "u1"
    assert decoded["exp"] > time.time()
