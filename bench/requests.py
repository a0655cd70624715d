"""Client requests through the real gateway: requests/s and latency of list and mark_read.

Starts its own vhost + database, one worker and one gateway (rate limit lifted), seeds users with 10,000
notifications each (and one with 100,000 for the unread-count and list figures), then drives real
WebSocket clients for a bounded time per scenario and prints one line per scenario. With ``--markdown``
the table is also printed as Markdown for docs/performance.md.

    .venv/bin/python -m bench.requests [--seconds 5] [--clients 16] [--users 4] [--markdown]

Keep runs short on a shared machine: each scenario runs ``--seconds`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from herald_ops.testing.requests import WsClient, seed
from herald_ops.testing.stack import fresh_id, stack_context
from worker.requests.notifications import ListParams
from worker.store.inbox import UNREAD_COUNT, list_query

if TYPE_CHECKING:
    from collections.abc import Callable

    from herald_ops.testing.stack import HeraldProcess, Stack

PER_USER = 10_000
BIG_USER = 100_000


@dataclass
class Outcome:
    name: str
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    def row(self) -> tuple[str, int, float, float, float]:
        ordered = sorted(self.latencies_ms)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (self.name, self.clients, self.requests / self.seconds, statistics.median(ordered), p99)


async def drive(
    gateway: HeraldProcess,
    name: str,
    users: list[str],
    clients: int,
    seconds: float,
    make_request: Callable[[random.Random, str], tuple[str, dict[str, Any]]],
) -> Outcome:
    """``clients`` connections (spread over ``users``), each sending one request at a time."""
    connections = [await WsClient.connect(gateway.ws_url, users[i % len(users)]) for i in range(clients)]
    for connection in connections:
        await connection.next_event("connected")
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop(index: int, connection: WsClient) -> None:
        nonlocal errors
        rng = random.Random(index)
        user = users[index % len(users)]
        while time.perf_counter() < deadline:
            method, params = make_request(rng, user)
            started = time.perf_counter()
            reply = await connection.request(method, params)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += "error" in reply
            connection.drain()  # events this run causes (notification:read) are not what is measured

    started = time.perf_counter()
    await asyncio.gather(*(loop(i, c) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - started
    for connection in connections:
        await connection.close()
    return Outcome(name, clients, len(latencies), errors, elapsed, latencies)


def list_request(rng: random.Random, user: str, size: int = PER_USER) -> tuple[str, dict[str, Any]]:
    # Half first pages, half pages at a random depth (keyset: the cost must not grow with depth).
    if rng.random() < 0.5:
        return "notifications.list", {"limit": 20}
    return "notifications.list", {"limit": 20, "before": rng.randint(21, size)}


def mark_read_request(rng: random.Random, user: str) -> tuple[str, dict[str, Any]]:
    return "notifications.mark_read", {"ids": [f"{user}-{rng.randint(1, PER_USER)}" for _ in range(5)]}


async def run(stack: Stack, args: argparse.Namespace) -> list[Outcome]:
    """Seed, then run every scenario against ``stack`` (a worker and a gateway are started here)."""
    stack.start_worker()
    gateway = stack.start_gateway(rate_limit_per_second=1_000_000, rate_limit_burst=1_000_000)
    conn = await asyncpg.connect(stack.database_url)
    users = [fresh_id("bench") for _ in range(args.users)]
    big = fresh_id("big")
    for user in users:
        await seed(conn, user, PER_USER)
    for _ in range(BIG_USER // PER_USER):
        await seed(conn, big, PER_USER)
    await conn.execute("VACUUM ANALYZE notifications")
    await conn.execute("VACUUM ANALYZE users")
    if args.explain:
        await explain(conn, big)
    await conn.close()

    outcomes = []
    for clients in (1, args.clients):
        outcomes.append(
            await drive(gateway, "notifications.list", users, clients, args.seconds, list_request)
        )
    outcomes.append(
        await drive(
            gateway,
            "notifications.list (100k user)",
            [big],
            args.clients,
            args.seconds,
            lambda rng, user: list_request(rng, user, BIG_USER),
        )
    )
    outcomes.append(
        await drive(
            gateway,
            "notifications.unread_count (100k user)",
            [big],
            args.clients,
            args.seconds,
            lambda rng, user: ("notifications.unread_count", {}),
        )
    )
    for clients in (1, args.clients):
        outcomes.append(
            await drive(gateway, "notifications.mark_read", users, clients, args.seconds, mark_read_request)
        )
    return outcomes


async def explain(conn: asyncpg.Connection, user: str) -> None:
    """Print the plans of the unread count and of list pages for a user with 100,000 notifications."""
    statements = [("notifications.unread_count", UNREAD_COUNT, [user])]
    for label, params in (
        ("notifications.list first page", ListParams()),
        ("notifications.list deep page", ListParams(before=BIG_USER // 2)),
        ("notifications.list unread_only", ListParams(unread_only=True)),
    ):
        sql, args = list_query(params, user)
        statements.append((label, sql, args))
    for label, sql, args in statements:
        plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", *args)
        print(f"--- {label}")
        print("\n".join(row[0] for row in plan))


def report(outcomes: list[Outcome], markdown: bool) -> None:
    for outcome in outcomes:
        name, clients, rate, p50, p99 = outcome.row()
        print(
            f"{name:42s} clients={clients:3d} requests={outcome.requests:6d} errors={outcome.errors} "
            f"req/s={rate:8.0f} p50={p50:6.2f}ms p99={p99:6.2f}ms"
        )
    if markdown:
        print("\n| method | clients | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
        for outcome in outcomes:
            name, clients, rate, p50, p99 = outcome.row()
            print(f"| `{name}` | {clients} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each scenario")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--users", type=int, default=4, help=f"users with {PER_USER:,} notifications each")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--explain", action="store_true", help="print query plans for the 100k user")
    arguments = parser.parse_args()
    # The stack is made outside the event loop: creating it runs the migrations with asyncio.run.
    with stack_context("herald_bench") as bench_stack:
        report(asyncio.run(run(bench_stack, arguments)), arguments.markdown)
