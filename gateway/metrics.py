"""Prometheus metrics of one gateway process, in their own registry (served at ``/metrics``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

if TYPE_CHECKING:
    from collections.abc import Callable


class Metrics:
    """Every series the gateway exports; gauges of live state are computed at scrape time."""

    def __init__(self) -> None:
        # ``*_created`` series double the exposition and say nothing a restart counter would not.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections = Gauge(
            "herald_gateway_connections", "Open authenticated WebSocket connections", registry=registry
        )
        self.users = Gauge(
            "herald_gateway_users", "Users with at least one connection here", registry=registry
        )
        self.amqp_up = Gauge("herald_gateway_amqp_up", "1 while the broker link is up", registry=registry)
        self.frames_relayed = Counter(
            "herald_gateway_frames_relayed",
            "Frames written to client connections, by origin (user or broadcast)",
            ["kind"],
            registry=registry,
        )
        self.requests = Counter(
            "herald_gateway_requests",
            "Client requests by method and outcome (ok, error, rate_limited, timeout, unavailable, invalid)",
            ["method", "outcome"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "herald_gateway_request_seconds",
            "Latency of forwarded requests, gateway → worker → gateway",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.closes = Counter(
            "herald_gateway_closes",
            "Connections the gateway closed, by close code",
            ["code"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "herald_gateway_auth_failures",
            "Refused tokens, by where (handshake, frame, refresh)",
            ["where"],
            registry=registry,
        )
        self.topology_retries = Counter(
            "herald_gateway_topology_retries",
            "Attach attempts (of a user or of a batch of users) retried after a 404 or channel loss",
            registry=registry,
        )
        self.user_frames = self.frames_relayed.labels("user")
        self.broadcast_frames = self.frames_relayed.labels("broadcast")

    def watch(
        self, connections: Callable[[], int], users: Callable[[], int], amqp_up: Callable[[], bool]
    ) -> None:
        """Compute the live gauges from the hub and the broker link at scrape time."""
        self.connections.set_function(connections)
        self.users.set_function(users)
        self.amqp_up.set_function(lambda: 1.0 if amqp_up() else 0.0)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
