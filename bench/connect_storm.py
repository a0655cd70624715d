"""A reconnect storm: ``--clients`` clients connect to one gateway at once; how soon are all ``connected``?

Starts its own vhost + database, one worker and one gateway, and makes the users known first (a storm
after a gateway restart reconnects users Herald has seen). Each round has two waves of the same
``--clients`` connections, from the same client code (``--client``: ``raw`` by default, prepared upgrade
requests that cost the box little beside the gateway, or the ``websockets`` library's client):

- **handshake only** (the floor): the WebSocket handshake without a token, which the gateway completes
  without the worker (the client would then have ``HERALD_AUTH_TIMEOUT`` to send ``auth``);
- **storm**: the handshake with a token, until the ``connected`` notification arrived, which takes
  ``session.open`` through the worker and the per-user binding of every connection.

The report gives, per round and as medians over ``--rounds``, the time until every client was connected
(target: <= 3 s for 5,000), p50/p99/max per client, and the storm's rate as a share of the handshake
rate (target: >= 40 %), with the CPU seconds the worker, the gateway, the broker (when it runs on this
machine) and this process's clients spent in each wave, and how many of the box's cores that kept busy.
The clients' process collects no garbage during a wave (as ``timeit``). After a wave's clients close,
the next wave waits until the gateway has let go of them: no user left (its ``herald_gateway_users``
gauge at 0) and no socket (its open file descriptors back to where the wave began). The time the
storm's detaches took is reported too. Otherwise one wave's closes would run during the next one's
handshakes.

    .venv/bin/python -m bench.connect_storm [--clients 5000] [--rounds 3] [--client raw|websockets]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import statistics
import time
import urllib.parse
from dataclasses import dataclass

import asyncpg
import orjson
import websockets

from bench.raw_clients import RawClient, Tally, close_clients
from herald_ops.testing.gateway import metric
from herald_ops.testing.measure import cpu_seconds, load_average, local_broker_pid, percentile
from herald_ops.testing.stack import HeraldProcess, Stack, fresh_id, mint, stack_context

#: Seconds the gateway gets to detach every user of a storm once its clients closed.
DETACH_DEADLINE = 300.0


@dataclass
class Wave:
    """One wave: per-client seconds from the start until ready, the wall time, the CPU seconds spent."""

    name: str
    seconds: list[float]
    failures: collections.Counter[str]
    wall: float
    #: CPU seconds spent during the wave, by process: worker, gateway, broker (when it runs on this
    #: machine) and this process, the clients.
    cpu: dict[str, float]
    #: Seconds from the clients' close until the gateway had detached every user (storm waves only).
    detached: float | None = None

    @property
    def rate(self) -> float:
        return len(self.seconds) / self.wall

    def line(self) -> str:
        ms = [s * 1000 for s in self.seconds]
        return (
            f"{self.name:15s} all={self.wall:5.2f}s rate={self.rate:6.0f}/s p50={percentile(ms, 0.5):5.0f}ms "
            f"p99={percentile(ms, 0.99):5.0f}ms max={max(ms, default=0):5.0f}ms "
            f"failures={sum(self.failures.values())} {dict(self.failures.most_common(3))} "
            f"CPU s {' '.join(f'{name} {seconds:.2f}' for name, seconds in self.cpu.items())} "
            f"= {sum(self.cpu.values()):.1f} ({sum(self.cpu.values()) / self.wall:.1f} cores)"
            + ("" if self.detached is None else f"; all detached {self.detached:.2f}s after the close")
        )


def open_files(pid: int) -> int:
    """How many file descriptors process ``pid`` holds (its sockets among them)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settle(gateway: HeraldProcess, baseline_files: int, since: float) -> float:
    """Wait until ``gateway`` holds no user and no more file descriptors than ``baseline_files`` (every
    socket of the wave closed on its side too); polled every 50 ms, within DETACH_DEADLINE. Return the
    seconds since ``since``."""
    assert gateway.popen is not None
    pid = gateway.popen.pid
    while (
        await asyncio.to_thread(metric, gateway, "herald_gateway_users") != 0
        or open_files(pid) > baseline_files
    ):
        if time.perf_counter() - since > DETACH_DEADLINE:
            raise SystemExit(
                f"the gateway still holds users or sockets {DETACH_DEADLINE:.0f} s after the close"
            )
        await asyncio.sleep(0.05)
    return time.perf_counter() - since


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process of ``pids``, and by this one (``clients``)."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()} | {"clients": time.process_time()}


class Clients:
    """Opens one connection per url and waits until it is ready: the handshake done, or, with
    ``until_connected``, the ``connected`` notification received.

    ``raw`` clients (:class:`bench.raw_clients.RawClient`) send a prepared upgrade request and read the
    first frame, so they cost the box little beside the gateway; ``websockets`` clients are the library's
    own, which cost this process about as much CPU as the gateway spends on them.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._open: list[RawClient | websockets.ClientConnection] = []

    async def ready(self, url: str, until_connected: bool) -> None:
        if self.kind == "raw":
            address = urllib.parse.urlsplit(url)
            port = address.port
            assert port is not None
            target = f"{address.path}?{address.query}" if address.query else address.path
            _, raw = await asyncio.get_running_loop().create_connection(
                lambda: RawClient(target, port, Tally()), address.hostname, port
            )
            self._open.append(raw)
            await raw.upgraded
            if until_connected:
                await asyncio.wait([raw.first_frame])
                if raw.first_frame.cancelled():
                    raise ConnectionError("closed before the first frame")
                first = raw.first_frame.result()
                try:
                    method = orjson.loads(first).get("method")
                except orjson.JSONDecodeError:  # a close frame, say: its code and reason are not JSON
                    method = None
                if method != "connected":
                    raise ConnectionError(f"first frame is not connected: {first[:60]!r}")
            return
        # No proxy lookup (``proxy=None``): reading the environment for one was 9 % of this process's
        # samples, and the floor is meant to be the gateway's handshake rate.
        ws = await websockets.connect(url, compression=None, open_timeout=60, max_queue=None, proxy=None)
        self._open.append(ws)
        if until_connected:
            while orjson.loads(await ws.recv()).get("method") != "connected":
                pass

    async def close(self) -> None:
        opened, self._open = self._open, []
        await asyncio.gather(
            *(client.close() for client in opened if isinstance(client, websockets.ClientConnection))
        )
        close_clients([client for client in opened if isinstance(client, RawClient)])


async def wave(
    name: str, urls: list[str], pids: dict[str, int], until_connected: bool, gateway: HeraldProcess, kind: str
) -> Wave:
    """Open every url at once (see :class:`Clients`). Then close them all and, with ``until_connected``,
    wait until ``gateway`` has detached every user."""
    ready: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    clients = Clients(kind)
    assert gateway.popen is not None
    baseline_files = open_files(gateway.popen.pid)
    # No garbage collection in this process during the wave, as in timeit: with 5,000 connections
    # alive, CPython's collector took half of this process's CPU, so the floor measured the clients.
    gc.collect()
    gc.disable()
    cpu_before = cpu_now(pids)
    started = time.perf_counter()

    async def one(url: str) -> None:
        try:
            await clients.ready(url, until_connected)
            ready.append(time.perf_counter() - started)
        except (OSError, websockets.WebSocketException, TimeoutError, RuntimeError) as exc:
            failures[f"{type(exc).__name__}: {exc}"[:80]] += 1

    await asyncio.gather(*(one(url) for url in urls))
    wall = time.perf_counter() - started
    cpu = {name: seconds - cpu_before[name] for name, seconds in cpu_now(pids).items()}
    closed = time.perf_counter()
    await clients.close()
    gc.enable()
    # Both waves wait for the gateway to let go of them, so that no wave's closes run into the next.
    settled = await settle(gateway, baseline_files, since=closed)
    detached = settled if until_connected else None
    return Wave(name, ready, failures, wall, cpu, detached)


async def run(stack: Stack, args: argparse.Namespace) -> list[tuple[Wave, Wave]]:
    worker = stack.start_worker()
    gateway = stack.start_gateway(
        rate_limit_per_second=1_000_000, rate_limit_burst=1_000_000, auth_timeout=120
    )
    assert worker.popen is not None
    assert gateway.popen is not None
    pids = {"worker": worker.popen.pid, "gateway": gateway.popen.pid}
    if (broker := local_broker_pid()) is not None:
        pids["broker"] = broker
    print(f"pids {pids}", flush=True)
    users = [fresh_id("storm") for _ in range(args.clients)]
    conn = await asyncpg.connect(stack.database_url)
    await conn.execute("INSERT INTO users (user_id) SELECT unnest($1::text[])", users)
    await conn.close()
    bare = [gateway.ws_url] * args.clients
    with_tokens = [f"{gateway.ws_url}?token={mint(user)}" for user in users]
    rounds = []
    for number in range(args.rounds):
        floor = await wave("handshake only", bare, pids, False, gateway, args.client)
        print(f"  storm of {args.clients} connections", flush=True)
        storm = await wave("storm", with_tokens, pids, True, gateway, args.client)
        rounds.append((floor, storm))
        print(f"round {number + 1} (load average {load_average():.1f})")
        print(
            f"  {floor.line()}\n  {storm.line()}\n  storm rate = {storm.rate / floor.rate:.0%} of handshake"
        )
    return rounds


def report(rounds: list[tuple[Wave, Wave]]) -> None:
    print(f"medians of {len(rounds)} rounds (load average {load_average():.1f})")
    for index, name in enumerate(("handshake only", "storm")):
        waves = [r[index] for r in rounds]
        print(
            f"  {name:15s} all connected after {statistics.median(w.wall for w in waves):.2f} s, "
            f"{statistics.median(w.rate for w in waves):,.0f}/s"
        )
    share = statistics.median(storm.rate / floor.rate for floor, storm in rounds)
    print(f"  storm rate = {share:.0%} of the handshake rate")
    detached = statistics.median(storm.detached or 0.0 for _, storm in rounds)
    print(f"  every user detached {detached:.2f} s after the storm's clients closed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000, help="clients connecting at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians reported)")
    parser.add_argument(
        "--client",
        choices=("raw", "websockets"),
        default="raw",
        help="raw: prepared upgrade requests, cheap for the box; websockets: the library's client",
    )
    arguments = parser.parse_args()
    # The stack is made outside the event loop: creating it runs the migrations with asyncio.run.
    with stack_context("herald_bench") as bench_stack:
        report(asyncio.run(run(bench_stack, arguments)))
