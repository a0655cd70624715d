"""Checking a URL before connecting with it: aio-pika's robust connection and the client's reconnect loop
retry a URL they cannot parse forever, so a malformed one is refused at once instead."""

from __future__ import annotations

from urllib.parse import urlsplit


def url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why ``url`` is no URL to connect to (a scheme among ``schemes``, a host, a valid port), or ``None``.

    The reason never quotes the URL: it may hold a password.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # the property raises ValueError for a port that is no number or past 65535
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in schemes:
        return f"the scheme must be {' or '.join(schemes)}"
    if not parts.hostname:
        return "the URL names no host"
    return None
