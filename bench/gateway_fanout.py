"""Gateway fan-out and idle-connection memory, side by side with a bare relay and a bare websockets server.

Run: ``.venv/bin/python bench/gateway_fanout.py`` (RabbitMQ on localhost, rabbitmqctl available).

Three servers, one after another in one run, on one vhost: a real gateway process (a stand-in for the
worker answers ``session.open``); the **bare relay**, websockets + aio-pika with the gateway's own AMQP
topology, the floor for relaying the worker's frames; and the **bare websockets server**, which writes
frames it generates in-process, the floor for writing to sockets (both in ``bench/relay_servers.py``).
What is measured:

1. **Per-user drain**: N frames, round-robin over 1,000 users with one connection each, are published to
   ``herald.users`` (with confirms) while the server process is stopped (SIGSTOP), so they wait in its
   queue; frames/s = N / time from SIGCONT until every client has every byte. Nothing else runs while it
   drains but RabbitMQ and the clients. The bare websockets server writes the same N frames round-robin,
   all ready when its start command arrives.
2. **Per-user live**: the same N frames published during the run, many in flight (gateway and bare relay;
   the publisher in this process shares the 2 cores with them and RabbitMQ).
3. **Broadcast**: M frames published to ``herald.broadcast``, each relayed to all 1,000 connections (the
   gateway after its per-user in-app check); the bare server calls ``websockets.broadcast`` M times.
4. **Idle memory**: the RSS growth of a fresh server process when 5,000 idle connections (5,000 distinct
   users, each attached by the gateway and the bare relay) are opened, divided by 5,000.

CPU µs per frame = the server process's user + system time during the measurement / frames. Clients are
raw sockets that count bytes after the handshake, so the client side costs almost nothing. The one-minute
load average taken at the end of each measurement is printed beside its figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402
import uvloop  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from bench.fanout_report import report  # noqa: E402
from bench.raw_clients import (  # noqa: E402
    RawClient,
    Tally,
    close_clients,
    open_clients,
    rss_kib,
    wait_first_frames,
    wait_gateway_connections,
    wait_unbound,
    wire_size,
)
from bench.relay_servers import frame_of_size  # noqa: E402
from herald_ops.testing.gateway import Responder  # noqa: E402
from herald_ops.testing.measure import cpu_seconds, load_average  # noqa: E402
from herald_ops.testing.stack import AMQP_BASE, HeraldProcess, free_port, rabbitmqctl  # noqa: E402
from shared.tokens import mint_token  # noqa: E402
from shared.topology import Topology  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aio_pika.abc import AbstractExchange

SECRET = "bench-secret-that-is-long-enough-for-hs256!"
NAMES = Topology()


@dataclass
class Server:
    """One server process under measurement. ``greets``: it writes a first frame to a connection once the
    connection's user is attached (``connected``, or the bare relay's ``attached``); ``metrics``: it
    reports its connections on ``/metrics`` (the gateway)."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    path_for: Callable[[str], str]
    greets: bool
    metrics: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def progress(step: str) -> None:
    print(
        f"{time.strftime('%H:%M:%S')} {step} (load average {load_average():.1f})", file=sys.stderr, flush=True
    )


def relay_path(user: str) -> str:
    """The bare relay takes the user id from the path."""
    return f"/{user}"


def bare_path(user: str) -> str:
    """The bare websockets server serves anyone, ``user`` included, on ``/``."""
    return "/"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.vhost = f"herald_bench_{uuid.uuid4().hex[:8]}"
        self.amqp_url = f"{AMQP_BASE}/{self.vhost}"
        self.servers: list[Server] = []
        self.responder = Responder(self.amqp_url)
        self.frames = [frame_of_size(n, args.payload) for n in range(1000)]

    def start_gateway(self) -> Server:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update(
            HERALD_AMQP_URL=self.amqp_url,
            HERALD_JWT_SECRET=SECRET,
            HERALD_GATEWAY_PORT=str(port),
            HERALD_RATE_LIMIT_PER_SECOND="100000",
            HERALD_RATE_LIMIT_BURST="100000",
            HERALD_PING_INTERVAL="600",
            HERALD_LOG_LEVEL="WARNING",
            HERALD_LOG_FORMAT="json",
        )
        proc = HeraldProcess.start("bench-gateway", [sys.executable, "-m", "gateway"], env, port)
        assert proc.popen is not None

        def path_for(user: str) -> str:
            return f"/notifications?token={mint_token(SECRET, user, ttl=7200)}"

        return self.track(Server("gateway", proc.popen, port, path_for, greets=True, metrics=True))

    def start_baseline(self, name: str) -> Server:
        """``relay`` (the bare relay, on this run's vhost) or ``bare`` (the bare websockets server)."""
        port = free_port()
        if name == "relay":
            argv, path_for, greets = ["bare-relay", str(port), self.amqp_url], relay_path, True
        else:
            argv, path_for, greets = ["bare-server", str(port)], bare_path, False
        command = [sys.executable, "-m", "bench.relay_servers", *argv]
        server = Server(
            name, subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT), port, path_for, greets
        )
        self.track(server)
        assert server.popen.stdout is not None
        if server.popen.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the {name} server did not start")
        return server

    def track(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    async def measure(
        self,
        results: dict[str, float],
        key: str,
        server: Server,
        tally: Tally,
        frames: int,
        start: Callable[[], Awaitable[None]],
    ) -> None:
        """Run ``start`` and wait until the clients have ``frames`` more frames; record frames/s (wall
        clock), the server's CPU microseconds per frame and the load average."""
        tally.expect(frames * wire_size(self.args.payload))
        cpu_before = cpu_seconds(server.pid)
        began = time.perf_counter()
        await start()
        await asyncio.wait_for(tally.reached.wait(), 300)
        elapsed = time.perf_counter() - began
        results[f"{server.name} {key}"] = frames / elapsed
        results[f"{server.name} {key} cpu"] = (cpu_seconds(server.pid) - cpu_before) / frames * 1e6
        results[f"{server.name} {key} load"] = load_average()

    async def publish_user_frames(self, exchange: AbstractExchange, users: list[str]) -> None:
        # Many publishes in flight: the publisher (in this process) must not be what is measured.
        count = self.args.user_frames
        for first in range(0, count, 500):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(self.frames[n % 1000], type="notification:new"),
                        routing_key=users[n % len(users)],
                        mandatory=False,
                    )
                    for n in range(first, min(first + 500, count))
                )
            )

    async def relay_phases(self, server: Server, results: dict[str, float]) -> None:
        """Drain, live and broadcast through the broker, for the gateway or the bare relay."""
        args = self.args
        users = [f"bench-u{i}" for i in range(args.clients)]
        tally = Tally()
        clients = await open_clients(server.port, [server.path_for(u) for u in users], tally)
        await wait_first_frames(clients)
        connection = await aio_pika.connect(self.amqp_url)
        try:
            live = await connection.channel(publisher_confirms=False)
            confirmed = await connection.channel(publisher_confirms=True)
            users_x = await live.get_exchange(NAMES.users_exchange)
            broadcast_x = await live.get_exchange(NAMES.broadcast_exchange)

            async def resume() -> None:
                server.popen.send_signal(signal.SIGCONT)

            server.popen.send_signal(signal.SIGSTOP)
            try:
                # Confirmed: every frame is in the stopped server's queue before the clock starts.
                await self.publish_user_frames(await confirmed.get_exchange(NAMES.users_exchange), users)
                await self.measure(results, "drain", server, tally, args.user_frames, resume)
            finally:
                await resume()

            async def publish_live() -> None:
                await self.publish_user_frames(users_x, users)

            await self.measure(results, "user", server, tally, args.user_frames, publish_live)

            async def publish_broadcasts() -> None:
                for n in range(args.broadcasts):
                    message = aio_pika.Message(
                        self.frames[n % 1000],
                        type="notification:new",
                        headers={"x-herald-type": "NEW_COMMENT"},
                    )
                    await broadcast_x.publish(message, routing_key="", mandatory=False)

            fanned = args.broadcasts * args.clients
            await self.measure(results, "broadcast", server, tally, fanned, publish_broadcasts)
        finally:
            close_clients(clients)
            await connection.close()

    async def bare_phases(self, server: Server, results: dict[str, float]) -> None:
        """The same per-user frames and broadcasts, generated by the bare websockets server."""
        args = self.args
        tally = Tally()
        clients = await open_clients(server.port, [server.path_for("") for _ in range(args.clients)], tally)
        async with connect(f"ws://127.0.0.1:{server.port}/control") as control:
            for kind, key, count, frames in (
                ("user", "drain", args.user_frames, args.user_frames),
                ("broadcast", "broadcast", args.broadcasts, args.broadcasts * args.clients),
            ):

                async def command(kind: str = kind, count: int = count) -> None:
                    await control.send(f"{kind} {count} {args.payload}")

                await self.measure(results, key, server, tally, frames, command)
                await control.recv()
        close_clients(clients)

    async def fanout(self) -> dict[str, float]:
        results: dict[str, float] = {}
        for start in (self.start_gateway, lambda: self.start_baseline("relay")):
            server = start()
            progress(f"fan-out through {server.name}")
            await self.relay_phases(server, results)
            server.stop()
        server = self.start_baseline("bare")
        progress("fan-out from bare")
        await self.bare_phases(server, results)
        server.stop()
        return results

    async def settle(self, server: Server, clients: list[RawClient]) -> None:
        if server.greets:
            await wait_first_frames(clients)
        await asyncio.sleep(1.0)
        if server.metrics:
            await wait_gateway_connections(server.port, len(clients))

    async def idle_memory(self, server: Server) -> tuple[float, float]:
        """KiB of RSS per idle connection, first wave and second wave.

        Warm up with 50 connections, take a baseline, open the rest and measure (first wave: includes
        what the allocator keeps from the connect burst); close them all, open the same number again and
        measure against the same baseline (second wave: the steady state once freed memory is reused).
        """
        paths = [server.path_for(f"idle-u{i}") for i in range(self.args.idle + 50)]
        tally = Tally()
        warm = await open_clients(server.port, paths[:50], tally)
        await self.settle(server, warm)
        close_clients(warm)
        await asyncio.sleep(1.0)  # let the server finish closing the warm-up connections
        before = rss_kib(server.pid)
        waves = []
        for _ in range(2):
            clients = await open_clients(server.port, paths[50:], tally)
            await self.settle(server, clients)
            waves.append((rss_kib(server.pid) - before) / len(clients))
            close_clients(clients)
            await asyncio.sleep(2.0)
            if server.metrics:
                await wait_gateway_connections(server.port, 0)
        # The relays unbind each user as the clients go; stopped before that ends, a relay would leave
        # the broker minutes of work deleting its queue with the rest of the bindings.
        await wait_unbound(self.vhost)
        return waves[0], waves[1]

    async def memory(self) -> dict[str, float]:
        results: dict[str, float] = {}
        starts = (
            self.start_gateway,
            lambda: self.start_baseline("relay"),
            lambda: self.start_baseline("bare"),
        )
        for start in starts:
            server = start()
            progress(f"idle memory of {server.name}")
            first, second = await self.idle_memory(server)
            results[f"{server.name} KiB/conn"], results[f"{server.name} KiB/conn (2nd wave)"] = first, second
            results[f"{server.name} KiB/conn load"] = load_average()
            server.stop()
        return results

    async def run(self) -> dict[str, float]:
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        try:
            await self.responder.start()
            results: dict[str, float] = {}
            if "fanout" in self.args.phases:
                results.update(await self.fanout())
            if "memory" in self.args.phases:
                results.update(await self.memory())
            return results
        finally:
            for server in self.servers:
                server.stop()
            await self.responder.stop()
            try:
                rabbitmqctl("delete_vhost", self.vhost, check=False)
            except subprocess.TimeoutExpired:  # a busy broker goes on deleting it
                progress(f"rabbitmqctl delete_vhost {self.vhost} timed out; RabbitMQ finishes it on its own")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--user-frames", type=int, default=20000)
    parser.add_argument("--broadcasts", type=int, default=200)
    parser.add_argument("--payload", type=int, default=200, help="frame size in bytes")
    parser.add_argument("--phases", default="fanout,memory", help="comma-separated: fanout, memory")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * (args.idle + args.clients) + 1000
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))  # children inherit it
    results = uvloop.run(Bench(args).run())
    print(report(args, results))


if __name__ == "__main__":
    main()
