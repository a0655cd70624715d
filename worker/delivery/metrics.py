"""Prometheus metrics of ``herald-delivery`` (served on its ``/metrics``)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

DELIVERIES: Final = Counter(
    "herald_deliveries",
    "Delivery attempts settled, by channel and outcome: sent, skipped, retry (transient failure, tried "
    "again later), failed (dead-lettered), cancelled (read or deleted before a delayed job was due).",
    ["channel", "outcome"],
)
SEND_SECONDS: Final = Histogram(
    "herald_delivery_send_seconds",
    "Time of one send attempt (SMTP transaction or the pushes of one job), rate-cap wait excluded.",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
DEAD_LETTERED: Final = Counter(
    "herald_delivery_dead_lettered", "Jobs published to herald.deliveries.dead, by channel.", ["channel"]
)
