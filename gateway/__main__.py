"""``herald-gateway`` / ``python -m gateway``: run one gateway process on uvloop
(:func:`shared.process.run`: the garbage collector set for a server first)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.app import Gateway
from gateway.auth import load_edge_settings
from shared.process import run

if TYPE_CHECKING:
    from shared.settings import Settings


async def serve(settings: Settings) -> None:
    """Run a :class:`Gateway` until SIGTERM/SIGINT."""
    await Gateway(settings).run()


def main() -> None:
    """Load settings (exit 2 naming a bad variable), then serve until SIGTERM/SIGINT; exit 0."""
    run(serve(load_edge_settings()))


if __name__ == "__main__":
    main()
