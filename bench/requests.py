"""Client requests through the real gateway, as ratios of the gateway's own ``ping`` in the same round.

Starts its own vhost + database, one worker and one gateway (rate limit lifted), seeds ``--users`` users
with 10,000 notifications each, opens ``--connections`` WebSocket connections (spread over the users) and
keeps ``--in-flight`` requests outstanding (each of that many loops sends one request at a time, on the
connections in turn) for ``--seconds`` per scenario:

- ``ping``: answered by the gateway alone, the floor of the WebSocket + JSON-RPC path on this box now;
- ``notifications.list``: half first pages, half at a random depth (``before`` = random seq);
- ``notifications.mark_read``: 5 random ids of the caller's own.

Each round runs the three back to back; the report gives the medians over ``--rounds`` of requests/s,
p50 and p99, list and mark_read as a share of ping's rate and their p99 as a multiple of ping's p99
(targets: list >= 30 %, mark_read >= 25 %, p99 <= 5x ping's), and the CPU time the worker and the gateway
spent per request (which the other jobs on a shared box move less than the rates). ``--explain`` prints
the query plans of the unread count and of list pages for one seeded user.

After the rounds, bench/http_api.py drives ``herald-api``'s list and count and the floor (a bare Starlette
+ asyncpg + PyJWT endpoint running the same page query) with ``wrk`` at ``--http-connections``, and prints
herald-api's list as a share of the floor (target >= 50 %).

    .venv/bin/python -m bench.requests [--seconds 5] [--rounds 3] [--connections 500] [--in-flight 50]
        [--http-connections 50]
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

from bench.http_api import report_http, run_http
from herald_ops.testing.measure import cpu_seconds, load_average, percentile
from herald_ops.testing.requests import WsClient, seed
from herald_ops.testing.stack import fresh_id, stack_context
from worker.requests.notifications import ListParams
from worker.store.inbox import UNREAD_COUNT, list_query

if TYPE_CHECKING:
    from collections.abc import Callable

    from herald_ops.testing.stack import Stack

PER_USER = 10_000
Request = tuple[str, dict[str, Any] | None]


@dataclass
class Outcome:
    """One scenario of one round."""

    name: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    #: CPU ms per request of the worker and of the gateway process.
    cpu_ms: tuple[float, float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, share: float) -> float:
        return percentile(self.latencies_ms, share)


async def drive(
    pids: list[int],
    connections: list[tuple[str, WsClient]],
    name: str,
    in_flight: int,
    seconds: float,
    make_request: Callable[[random.Random, str], Request],
) -> Outcome:
    """``in_flight`` loops, each sending one request at a time on every ``in_flight``-th connection."""
    print(f"  {name} for {seconds:.0f} s", flush=True)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop(index: int) -> None:
        nonlocal errors
        rng = random.Random(index)
        mine = connections[index::in_flight]
        turn = 0
        while time.perf_counter() < deadline:
            user, connection = mine[turn % len(mine)]
            turn += 1
            method, params = make_request(rng, user)
            started = time.perf_counter()
            reply = await connection.request(method, params, timeout=30)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += "error" in reply
            connection.drain()  # events this run causes (notification:read) are not what is measured

    started, cpu = time.perf_counter(), [cpu_seconds(pid) for pid in pids]
    await asyncio.gather(*(loop(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - started
    worker_ms, gateway_ms = (
        (cpu_seconds(pid) - before) * 1000 / len(latencies) for pid, before in zip(pids, cpu, strict=True)
    )
    return Outcome(name, len(latencies), errors, elapsed, latencies, (worker_ms, gateway_ms))


def ping_request(rng: random.Random, user: str) -> Request:
    return "ping", None


def list_request(rng: random.Random, user: str) -> Request:
    # Half first pages, half pages at a random depth (keyset: the cost must not grow with depth).
    if rng.random() < 0.5:
        return "notifications.list", {"limit": 20}
    return "notifications.list", {"limit": 20, "before": rng.randint(21, PER_USER)}


def mark_read_request(rng: random.Random, user: str) -> Request:
    return "notifications.mark_read", {"ids": [f"{user}-{rng.randint(1, PER_USER)}" for _ in range(5)]}


SCENARIOS: dict[str, Callable[[random.Random, str], Request]] = {
    "ping": ping_request,
    "notifications.list": list_request,
    "notifications.mark_read": mark_read_request,
}


async def open_connections(ws_url: str, users: list[str], count: int) -> list[tuple[str, WsClient]]:
    """``count`` connections (``connected`` received), users in turn; opened 50 at a time."""
    connections: list[tuple[str, WsClient]] = []
    for start in range(0, count, 50):
        batch = [users[i % len(users)] for i in range(start, min(count, start + 50))]
        clients = await asyncio.gather(*(WsClient.connect(ws_url, user) for user in batch))
        for user, client in zip(batch, clients, strict=True):
            await client.next_event("connected", timeout=30)
            connections.append((user, client))
    return connections


async def run(stack: Stack, args: argparse.Namespace) -> list[list[Outcome]]:
    """Seed, then run ``args.rounds`` rounds of every scenario (a worker and a gateway are started here)."""
    stack.start_worker()
    gateway = stack.start_gateway(
        rate_limit_per_second=1_000_000,
        rate_limit_burst=1_000_000,
        user_rate_limit_per_second=1_000_000,
        user_rate_limit_burst=1_000_000,
    )
    pids = [process.popen.pid for process in stack.processes if process.popen is not None]
    print(f"worker pid {pids[0]}, gateway pid {pids[1]}", flush=True)
    conn = await asyncpg.connect(stack.database_url)
    users = [fresh_id("bench") for _ in range(args.users)]
    for user in users:
        await seed(conn, user, PER_USER)
    await conn.execute("VACUUM ANALYZE notifications")
    await conn.execute("VACUUM ANALYZE users")
    if args.explain:
        await explain(conn, users[0])
    await conn.close()
    connections = await open_connections(gateway.ws_url, users, args.connections)
    rounds = []
    for number in range(args.rounds):
        outcomes = [
            await drive(pids, connections, name, args.in_flight, args.seconds, make_request)
            for name, make_request in SCENARIOS.items()
        ]
        rounds.append(outcomes)
        print(f"round {number + 1} (load average {load_average():.1f})")
        report([outcomes])
    for _, connection in connections:
        await connection.close()
    # herald-api and its floor in the same run, driven by wrk (a subprocess: off the loop).
    report_http(await asyncio.to_thread(run_http, stack, users[0], args.http_connections, args.seconds))
    return rounds


async def explain(conn: asyncpg.Connection, user: str) -> None:
    """Print the plans of the unread count and of list pages for ``user``."""
    statements = [("notifications.unread_count", UNREAD_COUNT, [user])]
    for label, params in (
        ("notifications.list first page", ListParams()),
        ("notifications.list deep page", ListParams(before=PER_USER // 2)),
        ("notifications.list unread_only", ListParams(unread_only=True)),
    ):
        sql, sql_args = list_query(params, user)
        statements.append((label, sql, sql_args))
    for label, sql, sql_args in statements:
        plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", *sql_args)
        print(f"--- {label}")
        print("\n".join(row[0] for row in plan))


def report(rounds: list[list[Outcome]]) -> None:
    """Per scenario, the medians over ``rounds``: req/s, p50, p99, and the ratios to ping's."""
    names = [outcome.name for outcome in rounds[0]]
    ping_rate = [outcome.rate for outcome in (r[0] for r in rounds)]
    ping_p99 = [outcome.percentile(0.99) for outcome in (r[0] for r in rounds)]
    for index, name in enumerate(names):
        runs = [r[index] for r in rounds]
        rate = statistics.median(o.rate for o in runs)
        share = statistics.median(o.rate / p for o, p in zip(runs, ping_rate, strict=True))
        worker_ms = statistics.median(o.cpu_ms[0] for o in runs)
        gateway_ms = statistics.median(o.cpu_ms[1] for o in runs)
        p99_ratio = statistics.median(o.percentile(0.99) / p for o, p in zip(runs, ping_p99, strict=True))
        print(
            f"  {name:26s} requests={sum(o.requests for o in runs):7d} errors={sum(o.errors for o in runs)} "
            f"req/s={rate:7.0f} p50={statistics.median(o.percentile(0.5) for o in runs):6.1f}ms "
            f"p99={statistics.median(o.percentile(0.99) for o in runs):6.1f}ms "
            f"of ping: rate {share:4.0%}, p99 {p99_ratio:4.1f}x; CPU ms/request worker {worker_ms:.2f} "
            f"gateway {gateway_ms:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each scenario")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all scenarios (medians reported)")
    parser.add_argument("--connections", type=int, default=500, help="open WebSocket connections")
    parser.add_argument("--in-flight", type=int, default=50, help="requests outstanding at any time")
    parser.add_argument("--users", type=int, default=50, help=f"users with {PER_USER:,} notifications each")
    parser.add_argument(
        "--http-connections", type=int, default=50, help="wrk connections for the HTTP figures"
    )
    parser.add_argument("--explain", action="store_true", help="print query plans for one seeded user")
    arguments = parser.parse_args()
    # The stack is made outside the event loop: creating it runs the migrations with asyncio.run.
    with stack_context("herald_bench") as bench_stack:
        all_rounds = asyncio.run(run(bench_stack, arguments))
        print(f"medians of {len(all_rounds)} rounds (load average {load_average():.1f})")
        report(all_rounds)
