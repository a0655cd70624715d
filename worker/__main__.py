"""``herald-worker`` / ``python -m worker``: run the worker app on uvloop until SIGINT or SIGTERM."""

from __future__ import annotations

from shared.process import run


def main() -> None:
    """Entry point of the ``herald-worker`` console script."""
    # Imported here so a configuration error is reported by load_settings before anything else starts.
    from worker.app import create_app

    run(create_app().run())


if __name__ == "__main__":
    main()
