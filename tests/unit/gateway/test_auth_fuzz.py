"""Hypothesis: JWT headers and claims of any shape are refused with :class:`AuthError` (401 / 4401),
never another exception, by a verifier holding an HS256 secret and an RSA public key."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import Claims, TokenVerifier, rfc3339
from gateway.errors import AuthError
from shared.settings import Settings

SECRET = "fuzz-secret-that-is-long-enough-for-hs256-0123"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
VERIFIER = TokenVerifier(
    Settings(  # type: ignore[call-arg]
        _env_file=None,
        jwt_secret=SECRET,
        jwt_public_key=RSA_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        jwt_algorithms="HS256,RS256,ES256",
        jwt_audience="herald",
    )
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def b64(document: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def verdict(token: str) -> object:
    try:
        return asyncio.run(VERIFIER.verify(token))
    except AuthError as refused:
        return refused


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "jku"]) | st.text(max_size=5), json_values, max_size=5
    ),
    st.dictionaries(
        st.sampled_from(["sub", "exp", "nbf", "aud", "iss", "roles"]) | st.text(max_size=5),
        json_values,
        max_size=6,
    ),
    st.binary(max_size=64),
)
def test_unsigned_headers_and_claims_of_any_shape_are_refused(
    header: dict[str, Any], claims: dict[str, Any], signature: bytes
) -> None:
    token = f"{b64(header)}.{b64(claims)}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert isinstance(verdict(token), AuthError)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["sub", "exp", "nbf", "aud", "iss", "roles"]) | st.text(max_size=5),
        json_values,
        max_size=6,
    ),
    st.sampled_from(["HS256", "RS256", "ES256"]),
)
def test_signed_tokens_with_any_claims_are_accepted_only_when_valid(claims: dict[str, Any], alg: str) -> None:
    key: Any = {"HS256": SECRET, "RS256": RSA_KEY, "ES256": EC_KEY}[alg]  # ES256 does not fit the RSA key
    try:
        token = jwt.encode(claims, key, algorithm=alg)
    except (TypeError, ValueError, jwt.PyJWTError):
        return  # PyJWT cannot even encode these claims
    outcome = verdict(token)
    assert isinstance(outcome, AuthError) or (alg != "ES256" and claims.get("aud") == "herald")


@settings(max_examples=200)
@given(
    st.integers(min_value=int(time.time()) + 600)
    | st.floats(min_value=time.time() + 600, allow_infinity=False)
)
def test_a_signed_tokens_exp_is_refused_or_written_as_rfc3339(exp: float) -> None:
    """An accepted token's ``exp`` becomes ``expires_at`` in ``auth`` and ``auth.refresh`` replies; one that
    RFC 3339 cannot write (after year 9999, e.g. milliseconds) is refused, never a ``ValueError``."""
    outcome = verdict(jwt.encode({"sub": "u1", "exp": exp, "aud": "herald"}, SECRET, algorithm="HS256"))
    if isinstance(outcome, AuthError):
        assert exp > 253_402_300_799, (exp, outcome)  # 9999-12-31T23:59:59Z
    else:
        assert isinstance(outcome, Claims)
        assert rfc3339(outcome.expires_at) <= "9999-12-31T23:59:59Z"


@given(st.text(max_size=300))
def test_any_text_as_a_token_is_refused(text: str) -> None:
    assert isinstance(verdict(text), AuthError)
