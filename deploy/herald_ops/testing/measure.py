"""What the benchmarks measure besides time: a process's CPU, percentiles, how busy the box is; and the
timestamped event stream the latency benchmarks publish."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import orjson
from aiormq import spec

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import aiormq


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_broker_pid() -> int | None:
    """The pid of the RabbitMQ node on this machine (the ``beam.smp`` started with ``-s rabbit boot``),
    or ``None``: a benchmark on one box can then count the broker's CPU beside Herald's."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or it ended meanwhile
            continue
        if argv and argv[0].endswith(b"beam.smp") and b"rabbit" in argv and b"boot" in argv:
            return int(entry.name)
    return None


def percentile(values: Sequence[float], share: float) -> float:
    """The value below which ``share`` of ``values`` lie (nearest rank; 0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def load_average() -> float:
    """The one-minute load average: other jobs on a shared box move every wall-clock figure."""
    return os.getloadavg()[0]


async def produce_timestamped(
    channel: aiormq.Channel,
    exchange: str,
    users: list[str],
    rate: int,
    run: str,
    *,
    tick: float,
    keep_going: Callable[[float], bool],
) -> int:
    """Publish ``rate`` persistent ``NEW_COMMENT`` send events a second to ``exchange``, each to a random
    user of ``users``, while ``keep_going(seconds since the start)``; return how many were published.

    Every ``tick`` seconds the events the rate calls for by then go out unconfirmed on the raw
    ``channel``; each carries ``data.run``, ``data.event`` (its id) and ``data.sent`` (``perf_counter``
    when published), from which a receiver in the same process takes the latency.
    """
    rng = random.Random(run)
    sent = 0
    started = time.perf_counter()
    while keep_going(elapsed := time.perf_counter() - started):
        while sent < int(elapsed * rate):
            event = {
                "event_id": f"{run}-{sent}",
                "user_id": rng.choice(users),
                "type": "NEW_COMMENT",
                "title": "A reply",
                "message": "Someone replied to your comment",
                "data": {"run": run, "event": f"{run}-{sent}", "sent": time.perf_counter()},
            }
            await channel.basic_publish(
                orjson.dumps(event),
                exchange=exchange,
                routing_key="notification.send",
                properties=spec.Basic.Properties(content_type="application/json", delivery_mode=2),
                wait=False,
            )
            sent += 1
        await asyncio.sleep(tick)
    return sent


def batch_totals(metrics_url: str) -> tuple[float, float, float]:
    """The worker's (seconds storing, batches, events in them) so far, from its ``/metrics``."""
    text = httpx.get(metrics_url, timeout=10).text

    def total(name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    return (
        total("herald_worker_store_seconds_sum"),
        total("herald_worker_store_seconds_count"),
        total("herald_worker_batch_size_sum"),
    )
