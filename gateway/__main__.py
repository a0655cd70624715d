"""``herald-gateway`` / ``python -m gateway``: run one gateway process on uvloop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvloop

from gateway.app import Gateway
from shared.logs import configure_logging
from shared.settings import ConfigError, exit_with_config_error, load_settings

if TYPE_CHECKING:
    from shared.settings import Settings


async def serve(settings: Settings) -> None:
    """Run a :class:`Gateway` until SIGTERM/SIGINT."""
    await Gateway(settings).run()


def main() -> None:
    """Load settings (exit 2 naming a bad variable), then serve until SIGTERM/SIGINT; exit 0."""
    settings = load_settings()
    try:
        settings.require_jwt_key()
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    configure_logging(settings)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
