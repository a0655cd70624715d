"""What verifying one token costs the gateway, side by side: a verifier holding one key (a secret alone,
the default) against one holding a secret and a public key, which reads the header first to pick the key.

Every connect and every ``auth.refresh`` verifies a token, so in a reconnect storm this is paid once per
client. Both verifiers check the same HS256 token in alternating rounds; the report gives the median
microseconds per token of each, and their ratio.

    .venv/bin/python -m bench.token_verify [--tokens 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import TokenVerifier
from herald_ops.testing.stack import TEST_JWT_SECRET, mint
from shared.settings import Settings


def verifier(public_key: str) -> TokenVerifier:
    return TokenVerifier(
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            jwt_secret=TEST_JWT_SECRET,
            jwt_public_key=public_key,
            jwt_algorithms="HS256,RS256",
        )
    )


async def microseconds_per_token(chosen: TokenVerifier, tokens: list[str]) -> float:
    started = time.perf_counter()
    for token in tokens:
        await chosen.verify(token)
    return (time.perf_counter() - started) / len(tokens) * 1e6


async def main(args: argparse.Namespace) -> None:
    public_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    contenders = {"secret only": verifier(""), "secret + public key": verifier(public_pem)}
    # One token per client of a storm, as the benchmark's clients have: distinct users.
    tokens = [mint(f"verify-{number:06d}") for number in range(args.tokens)]
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, chosen in contenders.items():
            timings[name].append(await microseconds_per_token(chosen, tokens))
    medians = {name: statistics.median(values) for name, values in timings.items()}
    for name, values in timings.items():
        print(
            f"{name:20s} {medians[name]:6.1f} µs per token (rounds: {', '.join(f'{v:.1f}' for v in values)})"
        )
    print(f"one key / header first = {medians['secret only'] / medians['secret + public key']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=5000, help="distinct tokens verified per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    asyncio.run(main(parser.parse_args()))
