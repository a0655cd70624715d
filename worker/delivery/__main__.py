"""``herald-delivery`` / ``python -m worker.delivery``: run the delivery app on uvloop until SIGTERM."""

from __future__ import annotations

from shared.process import run


def main() -> None:
    """Entry point of the ``herald-delivery`` console script."""
    # Imported here so a configuration error is reported by the settings before anything else starts.
    from worker.delivery.app import create_app

    run(create_app().run())


if __name__ == "__main__":
    main()
