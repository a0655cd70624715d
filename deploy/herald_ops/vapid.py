"""``herald vapid``: print a new VAPID key pair for Web Push (docs/delivery.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.vapid import new_key_pair

if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    """Print the private key (PEM, for ``HERALD_VAPID_PRIVATE_KEY``) and the public key browsers use."""
    private_pem, public_key = new_key_pair()
    if args.private_only:
        print(private_pem, end="")
        return 0
    print("# HERALD_VAPID_PRIVATE_KEY (keep it secret; PEM text, or save it and set @/path/to/file):")
    print(private_pem, end="")
    print("# public key (what push.vapid_key returns; browsers subscribe with it):")
    print(public_key)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``herald vapid`` to the CLI."""
    parser = sub.add_parser("vapid", help="print a new VAPID key pair for Web Push")
    parser.add_argument("--private-only", action="store_true", help="print only the PEM private key")
    parser.set_defaults(handler=run)
