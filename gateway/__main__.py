"""``herald-gateway`` / ``python -m gateway``: run one gateway process on uvloop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvloop

from gateway.app import Gateway
from gateway.auth import load_edge_settings

if TYPE_CHECKING:
    from shared.settings import Settings


async def serve(settings: Settings) -> None:
    """Run a :class:`Gateway` until SIGTERM/SIGINT."""
    await Gateway(settings).run()


def main() -> None:
    """Load settings (exit 2 naming a bad variable), then serve until SIGTERM/SIGINT; exit 0."""
    uvloop.run(serve(load_edge_settings()))


if __name__ == "__main__":
    main()
