"""VAPID keys (RFC 8292): the public key clients subscribe with, derived from the configured private key."""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid02, b64urlencode


def load_vapid(private_pem: str) -> Vapid02:
    """The VAPID signer of a PEM private key (``HERALD_VAPID_PRIVATE_KEY``); ``ValueError`` if unusable."""
    try:
        return Vapid02.from_pem(private_pem.encode())
    except Exception as exc:  # py_vapid re-raises cryptography's errors as VapidException or ValueError
        raise ValueError(f"not a usable P-256 private key: {exc}") from None


def public_key(vapid: Vapid02) -> str:
    """The application server key browsers subscribe with: base64url of the uncompressed P-256 point."""
    raw = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    encoded: str = b64urlencode(raw)
    return encoded


def new_key_pair() -> tuple[str, str]:
    """A fresh key pair: the private key as PEM, the public key as :func:`public_key` prints it."""
    vapid = Vapid02()
    vapid.generate_keys()
    return vapid.private_pem().decode(), public_key(vapid)
