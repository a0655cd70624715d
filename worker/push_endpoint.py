"""Web Push endpoints as httpx parses them: checked where a subscription comes in (``push.subscribe``) and
again by the sender before it posts (a row stored before the check came in)."""

from __future__ import annotations

from typing import Final

import httpx

from worker.text import refuse_control_characters

_SCHEMES: Final = ("https", "http")


def parse_endpoint(endpoint: str, schemes: tuple[str, ...] = _SCHEMES) -> httpx.URL:
    """The URL httpx will post to; ``ValueError`` (saying why) if httpx cannot parse it, its scheme is not
    in ``schemes``, it names no host or its port is not 1-65535 (httpx parses such a port but the connect
    fails with an error that is not an ``httpx.HTTPError``)."""
    refuse_control_characters(endpoint)
    try:
        url = httpx.URL(endpoint)
        host, port = url.host, url.port  # checked lazily (``host`` decodes IDNA)
    except (httpx.InvalidURL, ValueError) as exc:  # an IDNA error is a ValueError, not InvalidURL
        raise ValueError(f"not a valid URL ({exc})") from None
    if url.scheme not in schemes:
        raise ValueError("must be an " + " or ".join(f"{scheme}://" for scheme in schemes) + " URL")
    if not host:
        raise ValueError("must name a host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return url


def audience(url: httpx.URL) -> str:
    """The origin a VAPID JWT is signed for (``aud``): scheme, host and any non-default port."""
    return f"{url.scheme}://{url.netloc.decode('ascii')}"
