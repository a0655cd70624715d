"""Gateway fan-out and idle-connection memory, side by side with a bare ``websockets.broadcast`` server.

Run: ``.venv/bin/python bench/gateway_fanout.py`` (RabbitMQ on localhost, rabbitmqctl available).

What is measured, in one run, on this machine:

1. **Per-user frames**: N frames published to ``herald.users``, round-robin over 1,000 users with one
   connection each; a real gateway process relays each to its user's connection. The bare server sends
   the same N frames round-robin over its 1,000 connections, generated in-process (no broker).
2. **Broadcast**: M frames published to ``herald.broadcast``; the gateway relays each to all 1,000
   connections (after its per-user in-app check). The bare server calls ``websockets.broadcast`` M times.
3. **Idle memory**: the RSS growth of a fresh gateway process (and of a fresh bare server) when 5,000
   authenticated, idle connections (5,000 distinct users) are opened, divided by 5,000.

Frames/s = frames written to client sockets / time from the first publish (or the bare server's start
command) until every client received every byte. Clients are raw sockets that count bytes after the
handshake, so the client side costs almost nothing; the publisher runs in this process. Both servers run
on uvloop with compression off. A stand-in for the worker answers ``session.open``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from herald_ops.testing.gateway import Responder  # noqa: E402
from herald_ops.testing.measure import cpu_seconds  # noqa: E402
from herald_ops.testing.stack import AMQP_BASE, HeraldProcess, free_port, http_get, rabbitmqctl  # noqa: E402
from shared.jsonrpc import notification_frame  # noqa: E402
from shared.tokens import mint_token  # noqa: E402

SECRET = "bench-secret-that-is-long-enough-for-hs256!"


def frame_of_size(n: int, payload_bytes: int) -> bytes:
    """A ``notification:new`` frame of exactly ``payload_bytes`` bytes (all frames equal in size)."""
    base = notification_frame(
        "notification:new", {"id": f"{n:08d}", "seq": None, "type": "NEW_COMMENT", "m": ""}
    )
    pad = payload_bytes - len(base)
    return notification_frame(
        "notification:new", {"id": f"{n:08d}", "seq": None, "type": "NEW_COMMENT", "m": "x" * max(pad, 0)}
    )


def wire_size(payload: int) -> int:
    """Bytes of an unmasked server → client text frame carrying ``payload`` bytes."""
    return payload + (2 if payload <= 125 else 4 if payload <= 65535 else 10)


class Tally:
    """Bytes received by all clients after their handshakes; wakes a waiter at a target."""

    def __init__(self) -> None:
        self.total = 0
        self.target: int | None = None
        self.reached: asyncio.Event = asyncio.Event()

    def add(self, n: int) -> None:
        self.total += n
        if self.target is not None and self.total >= self.target:
            self.reached.set()

    def expect(self, extra: int) -> None:
        self.reached.clear()
        self.target = self.total + extra
        if self.total >= self.target:
            self.reached.set()


class RawClient(asyncio.Protocol):
    """A WebSocket client that only performs the handshake and counts the bytes it receives."""

    def __init__(self, path: str, port: int, tally: Tally) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.tally = tally
        self.head = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.received = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:  # a uvloop transport is no asyncio.Transport
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(self.head[:80].decode(errors="replace")))
                return
            data = self.head[end + 4 :]
            self.head = b""
            self.upgraded.set_result(None)
        self.received += len(data)
        self.tally.add(len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during handshake"))


async def open_clients(port: int, paths: list[str], tally: Tally, parallel: int = 200) -> list[RawClient]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(parallel)

    async def one(path: str) -> RawClient:
        async with gate:
            _, client = await loop.create_connection(lambda: RawClient(path, port, tally), "127.0.0.1", port)
            await client.upgraded
            return client

    return list(await asyncio.gather(*(one(p) for p in paths)))


async def wait_first_frames(clients: list[RawClient]) -> None:
    """Wait until every gateway client received ``connected`` (it is sent after the user is attached)."""
    deadline = time.monotonic() + 120
    while any(c.received == 0 for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError("clients never got connected")
        await asyncio.sleep(0.05)


async def wait_gateway_connections(port: int, count: int) -> None:
    """Wait until the gateway reports ``count`` connections and as many users (one per connection here)."""
    deadline = time.monotonic() + 120
    expected = {f"herald_gateway_connections {count:.1f}", f"herald_gateway_users {count:.1f}"}
    while True:
        status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        if status == 200 and expected <= set(body.decode().splitlines()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway never reported {count} connections")
        await asyncio.sleep(0.2)


def close_clients(clients: list[RawClient]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- the bare server -----------------------------------------------------------------------------------


async def bare_server(port: int) -> None:
    """A websockets server that fans out on command: the baseline."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path != "/control":
            clients.append(ws)
            try:
                await ws.wait_closed()
            finally:
                clients.remove(ws)
            return
        async for command in ws:
            kind, count, size = str(command).split()
            frames = [frame_of_size(n, int(size)) for n in range(min(int(count), 1000))]
            targets = list(clients)
            for n in range(int(count)):
                frame = frames[n % len(frames)]
                if kind == "broadcast":
                    broadcast(targets, frame, text=True)
                else:
                    broadcast((targets[n % len(targets)],), frame, text=True)
            await ws.send("sent")

    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None, max_queue=8):
        print("ready", flush=True)
        await asyncio.Future()


# --- the run -------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.vhost = f"herald_bench_{uuid.uuid4().hex[:8]}"
        self.amqp_url = f"{AMQP_BASE}/{self.vhost}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.responder = Responder(self.amqp_url)

    def start_gateway(self) -> HeraldProcess:
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
        self.procs.append(proc.popen)
        return proc

    def start_bare(self) -> tuple[int, int]:
        port = free_port()
        popen = subprocess.Popen(
            [sys.executable, __file__, "--bare-server", str(port)], stdout=subprocess.PIPE, cwd=ROOT
        )
        self.procs.append(popen)
        assert popen.stdout is not None
        assert popen.stdout.readline().strip() == b"ready"
        return port, popen.pid

    @staticmethod
    def gateway_paths(users: list[str]) -> list[str]:
        return [f"/notifications?token={mint_token(SECRET, u, ttl=7200)}" for u in users]

    async def measure(
        self, results: dict[str, float], key: str, pid: int, tally: Tally, frames: int, size: int, start: Any
    ) -> None:
        """Run ``start`` and wait until every client has ``frames`` more frames of ``size`` bytes; record
        frames/s (wall clock) and the server process's CPU microseconds per frame."""
        tally.expect(frames * size)
        cpu_before = cpu_seconds(pid)
        began = time.perf_counter()
        await start()
        await asyncio.wait_for(tally.reached.wait(), 300)
        elapsed = time.perf_counter() - began
        results[key] = frames / elapsed
        results[f"{key} cpu"] = (cpu_seconds(pid) - cpu_before) / frames * 1e6

    async def fanout(self) -> dict[str, float]:
        args = self.args
        size = wire_size(args.payload)
        frames = [frame_of_size(n, args.payload) for n in range(1000)]
        results: dict[str, float] = {}
        users = [f"bench-u{i}" for i in range(args.clients)]

        gateway = self.start_gateway()
        tally = Tally()
        clients = await open_clients(gateway.port, self.gateway_paths(users), tally)
        await wait_first_frames(clients)
        connection = await aio_pika.connect(self.amqp_url)
        channel = await connection.channel(publisher_confirms=False)
        users_x = await channel.get_exchange("herald.users")
        broadcast_x = await channel.get_exchange("herald.broadcast")

        async def publish_user_frames() -> None:
            # Many publishes in flight: the publisher (in this process) must not be what is measured.
            for start in range(0, args.user_frames, 500):
                await asyncio.gather(
                    *(
                        users_x.publish(
                            aio_pika.Message(frames[n % 1000], type="notification:new"),
                            routing_key=users[n % len(users)],
                            mandatory=False,
                        )
                        for n in range(start, min(start + 500, args.user_frames))
                    )
                )

        async def publish_broadcasts() -> None:
            for n in range(args.broadcasts):
                message = aio_pika.Message(
                    frames[n % 1000], type="notification:new", headers={"x-herald-type": "NEW_COMMENT"}
                )
                await broadcast_x.publish(message, routing_key="", mandatory=False)

        assert gateway.popen is not None
        pid = gateway.popen.pid
        await self.measure(results, "gateway user", pid, tally, args.user_frames, size, publish_user_frames)
        fanned = args.broadcasts * args.clients
        await self.measure(results, "gateway broadcast", pid, tally, fanned, size, publish_broadcasts)
        close_clients(clients)
        await connection.close()

        bare_port, pid = self.start_bare()
        tally = Tally()
        clients = await open_clients(bare_port, ["/"] * args.clients, tally)
        async with connect(f"ws://127.0.0.1:{bare_port}/control") as control:

            async def command(kind: str, count: int) -> None:
                await control.send(f"{kind} {count} {args.payload}")

            await self.measure(
                results,
                "bare user",
                pid,
                tally,
                args.user_frames,
                size,
                lambda: command("user", args.user_frames),
            )
            await control.recv()
            await self.measure(
                results,
                "bare broadcast",
                pid,
                tally,
                fanned,
                size,
                lambda: command("broadcast", args.broadcasts),
            )
            await control.recv()
        close_clients(clients)
        return results

    async def idle_memory(self, pid: int, port: int, paths: list[str], gateway: bool) -> tuple[float, float]:
        """KiB of RSS per idle connection, first wave and second wave.

        Warm up with 50 connections, take a baseline, open the rest and measure (first wave: includes
        what the allocator keeps from the connect burst); close them all, open the same number again and
        measure against the same baseline (second wave: the steady state once freed memory is reused).
        """
        tally = Tally()
        warm = await open_clients(port, paths[:50], tally)
        if gateway:
            await wait_first_frames(warm)
        close_clients(warm)
        await asyncio.sleep(1.0)  # let the server finish closing the warm-up connections
        before = rss_kib(pid)
        waves = []
        for _ in range(2):
            clients = await open_clients(port, paths[50:], tally)
            if gateway:
                await wait_first_frames(clients)
            await asyncio.sleep(1.0)
            if gateway:
                await wait_gateway_connections(port, len(clients))
            waves.append((rss_kib(pid) - before) / len(clients))
            close_clients(clients)
            await asyncio.sleep(2.0)
            if gateway:
                await wait_gateway_connections(port, 0)
        return waves[0], waves[1]

    async def memory(self) -> dict[str, float]:
        n = self.args.idle + 50
        gateway = self.start_gateway()
        assert gateway.popen is not None
        paths = self.gateway_paths([f"idle-u{i}" for i in range(n)])
        results: dict[str, float] = {}
        cold, warm = await self.idle_memory(gateway.popen.pid, gateway.port, paths, True)
        results["gateway KiB/conn"], results["gateway KiB/conn (2nd wave)"] = cold, warm
        port, pid = self.start_bare()
        cold, warm = await self.idle_memory(pid, port, ["/"] * n, False)
        results["bare KiB/conn"], results["bare KiB/conn (2nd wave)"] = cold, warm
        return results

    async def run(self) -> dict[str, float]:
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        try:
            await self.responder.start()
            results: dict[str, float] = {}
            if "fanout" in self.args.phases:
                results.update(await self.fanout())
                self.stop_processes()
            if "memory" in self.args.phases:
                results.update(await self.memory())
            return results
        finally:
            self.stop_processes()
            await self.responder.stop()
            rabbitmqctl("delete_vhost", self.vhost, check=False)

    def stop_processes(self) -> None:
        for popen in self.procs:
            if popen.poll() is None:
                popen.terminate()
                try:
                    popen.wait(15)
                except subprocess.TimeoutExpired:
                    popen.kill()
        self.procs.clear()


def report(args: argparse.Namespace, r: dict[str, float]) -> str:
    rows = [
        f"Gateway fan-out ({args.clients} clients, {args.payload}-byte frames, {args.user_frames} per-user "
        f"frames, {args.broadcasts} broadcasts; idle memory at {args.idle} connections)",
        "",
        "| measure | herald gateway | bare websockets | ratio |",
        "|---|---:|---:|---:|",
    ]
    measures = [
        ("per-user frames/s", "user", "{:,.0f}", "{:.0%}"),
        ("per-user: server CPU µs per frame", "user cpu", "{:.1f}", "{:.1f}×"),
        ("broadcast frames/s (written to sockets)", "broadcast", "{:,.0f}", "{:.0%}"),
        ("broadcast: server CPU µs per frame", "broadcast cpu", "{:.2f}", "{:.1f}×"),
        ("RSS per idle connection, KiB (1st wave)", "KiB/conn", "{:.1f}", "{:.2f}×"),
        ("RSS per idle connection, KiB (2nd wave)", "KiB/conn (2nd wave)", "{:.1f}", "{:.2f}×"),
    ]
    for label, key, number, ratio in measures:
        if f"gateway {key}" in r:
            ours, bare = r[f"gateway {key}"], r[f"bare {key}"]
            rows.append(
                f"| {label} | {number.format(ours)} | {number.format(bare)} | {ratio.format(ours / bare)} |"
            )
    rows.append("")
    if "gateway KiB/conn" in r:
        met = "met" if r["gateway KiB/conn"] <= 20 else "MISSED"
        rows.append(f"Target ≤ 20 KiB per idle connection (1st wave): {met}.")
    if "gateway broadcast" in r:
        met = "met" if r["gateway broadcast"] >= 0.5 * r["bare broadcast"] else "MISSED"
        rows.append(f"Target broadcast ≥ 50% of bare websockets: {met}.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--user-frames", type=int, default=20000)
    parser.add_argument("--broadcasts", type=int, default=200)
    parser.add_argument("--payload", type=int, default=200, help="frame size in bytes")
    parser.add_argument("--phases", default="fanout,memory", help="comma-separated: fanout, memory")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.bare_server:
        uvloop.run(bare_server(args.bare_server))
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * (args.idle + args.clients) + 1000
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))  # children inherit it
    results = uvloop.run(Bench(args).run())
    print(report(args, results))


if __name__ == "__main__":
    main()
