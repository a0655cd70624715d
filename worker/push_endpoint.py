"""Web Push endpoints as httpx parses them, and the hosts they may name (``HERALD_PUSH_HOSTS``): checked
where a subscription comes in (``push.subscribe``) and again by the sender before it posts (a row stored
before a check came in, or before the setting changed)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

import httpx

from worker.text import refuse_control_characters

_SCHEMES: Final = ("https", "http")
#: IPv6 ranges that carry an IPv4 address in their low 32 bits: IPv4-compatible and NAT64 (RFC 6052).
_EMBEDDING_V4: Final = (ipaddress.ip_network("::/96"), ipaddress.ip_network("64:ff9b::/96"))
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def check_host(url: httpx.URL, hosts: tuple[str, ...], *, allow_local: bool) -> None:
    """``ValueError`` (naming the rule and the setting) unless ``url``'s host is one of ``hosts`` (the
    normalised ``HERALD_PUSH_HOSTS``: a name, an IP address, ``.domain`` for its subdomains, or ``*``).
    Under ``*``, a host that is not public (a loopback, private, link-local or other non-global address,
    ``localhost``, a name without a dot) is refused unless ``allow_local`` (``HERALD_PUSH_ALLOW_HTTP``):
    herald-delivery would post to it from inside the network. Names are not resolved."""
    host = url.raw_host.decode("ascii").lower().removesuffix(".")
    address = ip_literal(host)
    name = host if address is None else str(address)
    if name in hosts or (address is None and any(e.startswith(".") and name.endswith(e) for e in hosts)):
        return
    if "*" not in hosts:
        raise ValueError(f"host {name} is not one of the push services in HERALD_PUSH_HOSTS")
    if address is not None:
        local = not _public(address)
    else:
        local = name == "localhost" or name.endswith(".localhost") or "." not in name
    if local and not allow_local:
        raise ValueError(
            f"host {name} is loopback, private or otherwise not public: HERALD_PUSH_HOSTS=* allows "
            "public hosts only (HERALD_PUSH_ALLOW_HTTP lifts this, in development only)"
        )


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` names if it is an IP address in any form the resolver reads as one
    (``127.1``, ``2130706433`` and ``0x7f.1`` are 127.0.0.1 to ``getaddrinfo``), else ``None``."""
    try:
        return ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 zone (``%25eth0``)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _public(address: IPAddress) -> bool:
    """A global unicast address, and so is any IPv4 address an IPv6 one carries (mapped, 6to4, Teredo,
    IPv4-compatible, NAT64)."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    carried = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if any(address in network for network in _EMBEDDING_V4):
        carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return all(_public(v4) for v4 in carried if v4 is not None)
