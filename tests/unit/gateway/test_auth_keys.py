"""A verifier holding one key (a secret alone, or a public key alone, no JWKS) verifies without reading
the token's header first. It must still refuse every token for the same reason as a verifier holding
both keys, which picks the key by the header's ``alg``."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth import TokenVerifier
from gateway.errors import AuthError
from shared.settings import Settings

SECRET = "one-key-secret-that-is-long-enough-for-hs256-0123"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def verifier(secret: str, public_key: str) -> TokenVerifier:
    return TokenVerifier(
        Settings(  # type: ignore[call-arg]
            _env_file=None, jwt_secret=secret, jwt_public_key=public_key, jwt_algorithms="HS256,RS256"
        )
    )


BOTH = verifier(SECRET, PUBLIC_PEM)
SECRET_ONLY = verifier(SECRET, "")
PUBLIC_ONLY = verifier("", PUBLIC_PEM)


def outcome(chosen: TokenVerifier, token: str) -> str:
    """``accepted <user>`` or the refusal's reason."""
    try:
        return f"accepted {asyncio.run(chosen.verify(token)).user_id}"
    except AuthError as refused:
        return str(refused)


def claims(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in ({"sub": "one-key-user", "exp": int(time.time()) + 600} | changes).items() if v}


def unpadded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


HS = {
    "valid": lambda: jwt.encode(claims(), SECRET, algorithm="HS256"),
    "bad signature": lambda: jwt.encode(
        claims(), "another-secret-that-is-long-enough-0123456", algorithm="HS256"
    ),
    "expired": lambda: jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"),
    "future nbf": lambda: jwt.encode(claims(nbf=int(time.time()) + 300), SECRET, algorithm="HS256"),
    "no sub": lambda: jwt.encode(claims(sub=None), SECRET, algorithm="HS256"),
    "HS384 not allowed": lambda: jwt.encode(claims(), SECRET + SECRET, algorithm="HS384"),
}
RS = {
    "valid": lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256"),
    "bad signature": lambda: jwt.encode(claims(), STRANGER, algorithm="RS256"),
    "expired": lambda: jwt.encode(claims(exp=int(time.time()) - 60), RSA_KEY, algorithm="RS256"),
    "RS384 not allowed": lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS384"),
}
EITHER = {
    "alg none": lambda: jwt.encode(claims(), None, algorithm="none"),
    "garbage": lambda: "not.a.jwt",
    "empty": lambda: "",
    "two segments": lambda: f"{unpadded(b'{}')}.{unpadded(b'{}')}",
    "header not JSON": lambda: f"{unpadded(b'nope')}.{unpadded(b'{}')}.{unpadded(b'sig')}",
}


@pytest.mark.parametrize("case", sorted(HS))
def test_a_secret_alone_judges_hmac_tokens_as_both_keys_do(case: str) -> None:
    token = HS[case]()
    assert outcome(SECRET_ONLY, token) == outcome(BOTH, token)


@pytest.mark.parametrize("case", sorted(RS))
def test_a_public_key_alone_judges_rsa_tokens_as_both_keys_do(case: str) -> None:
    token = RS[case]()
    assert outcome(PUBLIC_ONLY, token) == outcome(BOTH, token)


@pytest.mark.parametrize("case", sorted(EITHER))
@pytest.mark.parametrize("chosen", [SECRET_ONLY, PUBLIC_ONLY], ids=["secret only", "public key only"])
def test_one_key_refuses_malformed_and_unsigned_tokens_as_both_keys_do(
    case: str, chosen: TokenVerifier
) -> None:
    token = EITHER[case]()
    assert outcome(chosen, token) == outcome(BOTH, token)
    assert not outcome(chosen, token).startswith("accepted")


def test_the_other_familys_tokens_are_refused_as_not_allowed() -> None:
    """The algorithm-confusion guard: a token of the family the verifier holds no key for."""
    assert outcome(BOTH, HS["valid"]()) == outcome(BOTH, RS["valid"]()) == "accepted one-key-user"
    assert outcome(SECRET_ONLY, RS["valid"]()) == "token algorithm not allowed"
    assert outcome(PUBLIC_ONLY, HS["valid"]()) == "token algorithm not allowed"


@given(st.text(max_size=300))
def test_any_text_is_refused_by_one_key_as_by_both(text: str) -> None:
    for chosen in (SECRET_ONLY, PUBLIC_ONLY):
        assert outcome(chosen, text) == outcome(BOTH, text)
