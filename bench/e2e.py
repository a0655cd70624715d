"""End to end at fixed rates: producer -> RabbitMQ -> worker -> Postgres -> gateway -> WebSocket clients.

Starts its own vhost + database, one worker and one gateway, connects ``--clients`` WebSocket clients
(one user each) and, for each rate of ``--rates``, publishes persistent ``NEW_COMMENT`` events (in-app:
one frame each) to ``herald.events`` at that rate for ``--seconds``, each to a random one of the users,
as a producer would. Each event carries the time it was published (this process both produces and
receives, so one clock serves both); a client takes the latency when its ``notification:new`` arrives.

Per rate: delivered/expected, p50/p95/p99/max of publish -> client in ms, the worker's and the gateway's
CPU share of a core, the worker's batches meanwhile (how many, their mean size, the mean time to store
one: the store's share of the wait), and the load average (targets on this box: p99 <= 25 ms at 500
ev/s, 1,500 ev/s sustained with p99 <= 100 ms). Events still missing 10 s after the last publish count as
not delivered.

    .venv/bin/python -m bench.e2e [--rates 500,1500] [--seconds 10] [--clients 1000] [--rounds 1]
        [--batch-timeout-ms MS] [--worker-only]

With ``--worker-only`` there is no gateway and no client: this process takes each frame from a queue
bound to ``herald.users`` for the users, so the latency is the worker's hop alone (publish -> RabbitMQ ->
worker -> Postgres -> RabbitMQ).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field

import aio_pika
import orjson
import websockets

from herald_ops.testing.measure import (
    batch_totals,
    cpu_seconds,
    load_average,
    percentile,
    produce_timestamped,
)
from herald_ops.testing.stack import Stack, fresh_id, mint, stack_context
from shared.topology import Topology

TOPOLOGY = Topology()
TICK = 0.01  # the producer publishes every 10 ms the events that rate calls for by then
GRACE = 10.0


@dataclass
class Receipts:
    """Latencies (ms) of the events of the current run, by event id; ids of other runs are ignored."""

    run: str = ""
    latencies: dict[str, float] = field(default_factory=dict)

    def take(self, raw: str | bytes) -> None:
        frame = orjson.loads(raw)
        if frame.get("method") != "notification:new":
            return
        params = frame["params"]
        data = params.get("data") or {}
        if data.get("run") == self.run:
            self.latencies[data["event"]] = (time.perf_counter() - data["sent"]) * 1000


async def client(url: str, receipts: Receipts, connected: asyncio.Event) -> None:
    async with websockets.connect(url, compression=None, open_timeout=60, max_queue=None) as ws:
        async for raw in ws:
            if b'"connected"' in (raw if isinstance(raw, bytes) else raw.encode()):
                connected.set()
                continue
            receipts.take(raw)


async def produce(
    exchange: aio_pika.abc.AbstractExchange, users: list[str], rate: int, seconds: float, run: str
) -> int:
    """Publish ``rate`` events/s for ``seconds``; return how many were published."""
    channel = await exchange.channel.get_underlay_channel()  # type: ignore[attr-defined]
    return await produce_timestamped(
        channel, exchange.name, users, rate, run, tick=TICK, keep_going=lambda elapsed: elapsed < seconds
    )


@dataclass
class Outcome:
    rate: int
    expected: int
    latencies: list[float]
    cpu_share: tuple[float, float]
    load: float
    #: The worker's batches meanwhile (seconds storing, batches, events): the store's share of the wait.
    batches: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def line(self) -> str:
        ms = self.latencies
        store, count, events = self.batches
        return (
            f"{self.rate:5d} ev/s: delivered {len(ms)}/{self.expected} "
            f"p50={percentile(ms, 0.5):6.1f} p95={percentile(ms, 0.95):6.1f} "
            f"p99={percentile(ms, 0.99):6.1f} max={max(ms, default=0):7.1f} ms; "
            f"CPU of a core: worker {self.cpu_share[0]:.0%}, gateway {self.cpu_share[1]:.0%}; "
            f"batches: {count:.0f} of {events / max(count, 1):.1f} events, "
            f"{store / max(count, 1) * 1000:.1f} ms each to store; load average {self.load:.1f}"
        )


async def run(stack: Stack, args: argparse.Namespace) -> list[Outcome]:
    worker = stack.start_worker(
        **({} if args.batch_timeout_ms is None else {"batch_timeout_ms": args.batch_timeout_ms})
    )
    users = [fresh_id("e2e") for _ in range(args.clients)]
    receipts = Receipts()
    clients = []
    if not args.worker_only:
        gateway = stack.start_gateway(rate_limit_per_second=1_000_000, rate_limit_burst=1_000_000)
        for start in range(0, len(users), 100):  # 100 at a time: the storm is bench/connect_storm.py
            batch = users[start : start + 100]
            connected = [asyncio.Event() for _ in batch]
            clients += [
                asyncio.create_task(client(f"{gateway.ws_url}?token={mint(user)}", receipts, event))
                for user, event in zip(batch, connected, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in connected)), 60)
    pids = [process.popen.pid for process in stack.processes if process.popen is not None]
    print("pids (worker, gateway): " + ", ".join(map(str, pids)), flush=True)
    connection = await aio_pika.connect(stack.amqp_url)
    outcomes = []
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        if args.worker_only:  # the frames where the worker publishes them: the worker's hop alone
            frames = await channel.declare_queue("", exclusive=True)
            for user in users:
                await frames.bind(TOPOLOGY.users_exchange, routing_key=user)
            await frames.consume(lambda message: receipts.take(message.body), no_ack=True)
        exchange = await channel.get_exchange(TOPOLOGY.events_exchange)
        for round_ in range(args.rounds):
            for rate in args.rates:
                receipts.run, receipts.latencies = fresh_id(f"r{round_}-{rate}"), {}
                cpu = [cpu_seconds(pid) for pid in pids]
                batches = batch_totals(f"{worker.url}/metrics")
                started = time.perf_counter()
                expected = await produce(exchange, users, rate, args.seconds, receipts.run)
                deadline = time.perf_counter() + GRACE
                while len(receipts.latencies) < expected and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                share = [(cpu_seconds(pid) - before) / elapsed for pid, before in zip(pids, cpu, strict=True)]
                share += [0.0] * (2 - len(share))  # no gateway with --worker-only
                after = batch_totals(f"{worker.url}/metrics")
                outcome = Outcome(
                    rate,
                    expected,
                    list(receipts.latencies.values()),
                    (share[0], share[1]),
                    load_average(),
                    (after[0] - batches[0], after[1] - batches[1], after[2] - batches[2]),
                )
                outcomes.append(outcome)
                print(f"round {round_ + 1}: {outcome.line()}", flush=True)
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    return outcomes


def report(outcomes: list[Outcome]) -> None:
    print("medians over rounds")
    for rate in sorted({o.rate for o in outcomes}):
        runs = [o for o in outcomes if o.rate == rate]
        p = {q: statistics.median(percentile(o.latencies, q) for o in runs) for q in (0.5, 0.95, 0.99)}
        delivered = sum(len(o.latencies) for o in runs)
        expected = sum(o.expected for o in runs)
        print(
            f"  {rate:5d} ev/s: delivered {delivered}/{expected} p50={p[0.5]:.1f} p95={p[0.95]:.1f} "
            f"p99={p[0.99]:.1f} max={statistics.median(max(o.latencies, default=0) for o in runs):.1f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")], default=[500, 1500])
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per rate")
    parser.add_argument("--clients", type=int, default=1000, help="connected clients, one user each")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all rates (medians reported)")
    parser.add_argument(
        "--worker-only",
        action="store_true",
        help="no gateway and no clients: take each frame from herald.users (the worker's hop alone)",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=None,
        help="the worker's HERALD_BATCH_TIMEOUT_MS [its default]",
    )
    arguments = parser.parse_args()
    # The stack is made outside the event loop: creating it runs the migrations with asyncio.run.
    with stack_context("herald_bench") as bench_stack:
        report(asyncio.run(run(bench_stack, arguments)))
