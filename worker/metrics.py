"""Prometheus metrics of the worker (served on ``/metrics``)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

EVENT_OUTCOMES: Final = ("stored", "duplicate", "muted", "broadcast", "dead_lettered", "requeued")
EVENTS: Final = Counter(
    "herald_worker_events",
    "Input events settled, by outcome: stored (at least one notification or delivery), duplicate "
    "(re-published from the store), muted (preferences allowed nothing), broadcast, dead_lettered, requeued.",
    ["outcome"],
)
# Every outcome is exported from the start, at 0: an idle worker has series too, so an alert on the
# series being absent means that no worker runs, not that none has had an event yet.
for _outcome in EVENT_OUTCOMES:
    EVENTS.labels(_outcome)
NOTIFICATIONS: Final = Counter("herald_worker_notifications_stored", "Notification rows inserted.")
DELIVERIES: Final = Counter(
    "herald_worker_deliveries", "Email/push jobs recorded for herald-delivery.", ["channel"]
)
BATCH_SIZE: Final = Histogram(
    "herald_worker_batch_size",
    "Events per committed batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
_LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STORE_SECONDS: Final = Histogram(
    "herald_worker_store_seconds", "Time to commit one batch or broadcast chunk.", buckets=_LATENCY_BUCKETS
)
PUBLISH_SECONDS: Final = Histogram(
    "herald_worker_publish_seconds",
    "Time to publish a batch's frames and deliveries, confirms included.",
    buckets=_LATENCY_BUCKETS,
)
DB_RETRIES: Final = Counter(
    "herald_worker_db_retries",
    "Batches retried, by cause: conflict (deadlock/serialization) or outage.",
    ["cause"],
)
DB_UP: Final = Gauge(
    "herald_worker_database_up",
    "1 when the last database operation succeeded (the start-up's catalog load, then every batch).",
)
RETENTION_DELETED: Final = Counter("herald_worker_retention_deleted", "Notifications removed by retention.")
CATALOG_TYPES: Final = Gauge("herald_worker_catalog_types", "Notification types in the loaded catalog.")
