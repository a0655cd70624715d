"""The JWKS key-set rules (sans-I/O): lifetime, replacement on refetch, and a cool-down that failed
fetches start too."""

from __future__ import annotations

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.jwks import KeySetCache


def jwk(kid: str) -> jwt.PyJWK:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwt.PyJWK({**data, "kid": kid, "alg": "RS256", "use": "sig"})


K1, K2 = jwk("k1"), jwk("k2")


def test_a_key_is_served_only_while_its_set_is_younger_than_the_lifespan() -> None:
    cache = KeySetCache(lifespan=300, cooldown=30)
    assert cache.get("k1", 0) is None
    cache.store([K1], now=10)
    assert cache.get("k1", 309.9) is K1
    assert cache.get("k1", 310) is None


def test_a_refetch_replaces_the_set_so_removed_keys_are_gone() -> None:
    cache = KeySetCache(lifespan=300, cooldown=0)
    cache.store([K1], now=0)
    cache.store([K2], now=1)
    assert cache.get("k1", 2) is None
    assert cache.get("k2", 2) is K2


def test_the_cooldown_counts_from_the_last_attempt_failed_or_not() -> None:
    cache = KeySetCache(lifespan=300, cooldown=30)
    assert cache.may_fetch(0)
    cache.attempted(5)  # a fetch that then failed: nothing stored
    assert not cache.may_fetch(34.9)
    assert cache.may_fetch(35)
