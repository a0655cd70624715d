"""Where the non-Python parts of Herald (``sql/``, ``clients/js/``) live at run time."""

from __future__ import annotations

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def resource_dir(*parts: str) -> Path:
    """``parts`` beside the packages in a checkout (editable install), else under the working directory
    (the container image's layout: ``/app/sql``, ``/app/clients/js``)."""
    beside = _CHECKOUT.joinpath(*parts)
    return beside if beside.is_dir() else Path.cwd().joinpath(*parts)
