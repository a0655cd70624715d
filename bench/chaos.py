"""Chaos figures: the fault scenarios of ``tests/fault/test_chaos.py`` at full size, and a soak.

Each scenario runs on its own vhost + database (``herald_ops.testing.chaos``) and prints: sent, stored,
delivered live, delivered by sync, lost, duplicated, and recovery times (gateway links up and every
client complete, from the moment the faulty part came back; clients reconnected for the gateway kill).

    .venv/bin/python -m bench.chaos [--scenario rabbitmq|postgres|gateway]
    .venv/bin/python -m bench.chaos --soak [--minutes 10 --connections 5000 --rate 200 --requests 20]

The scenarios stop the machine's RabbitMQ and Postgres: run them when nothing else uses those
services. The soak stops nothing; it holds ``--connections`` raw WebSocket connections on two gateways,
streams ``--rate`` events/s and ``--requests`` requests/s for ``--minutes``, samples gateway and worker
RSS every 10 s and prints each process's RSS slope (least squares, MiB per minute) and the error
lines of their logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aio_pika
import orjson
from websockets.asyncio.client import connect

from herald_ops.testing.chaos import (
    describe,
    kill_gateway,
    restart_postgres,
    restart_rabbitmq,
    run_scenario,
)
from herald_ops.testing.stack import fresh_id, mint, stack_context
from shared.topology import Topology

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from herald_ops.testing.stack import HeraldProcess, Stack

SCENARIOS = {
    "rabbitmq": ("rabbitmq restart (stop_app/start_app)", restart_rabbitmq(outage=10.0), 200, 2000),
    "postgres": ("postgres restart (fast)", restart_postgres(), 200, 2000),
    "gateway": ("gateway SIGKILL, clients fail over", kill_gateway(), 500, 2000),
}


def scenario(key: str, rate: float, as_json: bool) -> None:
    title, fault, clients, events = SCENARIOS[key]
    # The stack is created and dropped outside the scenario's event loop (it runs its own for that).
    with stack_context("herald_chaos") as stack:
        figures = asyncio.run(run_scenario(stack, title, fault, clients=clients, events=events, rate=rate))
    print(json.dumps(describe(figures)) if as_json else figures.line(), flush=True)


def rss_mib(process: HeraldProcess) -> float:
    assert process.popen is not None
    status = Path(f"/proc/{process.popen.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, MiB)`` samples, in MiB per minute."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples) or 1.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var


async def hold(url: str, user: str, held: list[ClientConnection]) -> None:
    ws = await connect(f"{url}?token={mint(user)}", compression=None, max_queue=None)
    held.append(ws)


def soak(minutes: float, connections: int, rate: float, requests: float) -> None:
    with stack_context("herald_soak") as stack:
        asyncio.run(_soak(stack, minutes, connections, rate, requests))


async def _soak(stack: Stack, minutes: float, connections: int, rate: float, requests: float) -> None:
    worker = stack.start_worker()
    gateways = [stack.start_gateway(max_connections_per_user=64) for _ in range(2)]
    users = [fresh_id("s") for _ in range(max(connections // 4, 1))]
    held: list[ClientConnection] = []
    for start in range(0, connections, 200):
        await asyncio.gather(
            *(
                hold(gateways[n % 2].ws_url, users[n % len(users)], held)
                for n in range(start, min(start + 200, connections))
            )
        )
    readers = [asyncio.create_task(_drain(ws)) for ws in held]
    samples: dict[str, list[tuple[float, float]]] = {"worker": [], "gateway-1": [], "gateway-2": []}
    processes = {"worker": worker, "gateway-1": gateways[0], "gateway-2": gateways[1]}
    connection = await aio_pika.connect(stack.amqp_url)
    exchange = await (await connection.channel()).get_exchange(Topology().events_exchange)
    started = time.monotonic()
    sent = asked = 0
    next_sample = started
    while (elapsed := time.monotonic() - started) < minutes * 60:
        while sent < elapsed * rate:
            body = {"user_id": users[sent % len(users)], "type": "COURSE_UPDATE", "title": f"soak {sent}"}
            await exchange.publish(aio_pika.Message(orjson.dumps(body)), routing_key="notification.send")
            sent += 1
        while asked < elapsed * requests:
            request = {"jsonrpc": "2.0", "id": asked, "method": "notifications.unread_count"}
            await held[asked % len(held)].send(orjson.dumps(request).decode())
            asked += 1
        if time.monotonic() >= next_sample:
            for name, process in processes.items():
                samples[name].append((elapsed, rss_mib(process)))
            next_sample += 10
        await asyncio.sleep(0.01)
    await connection.close()
    for task in readers:
        task.cancel()
    print(f"soak: {len(held)} connections, {sent} events, {asked} requests in {minutes:.1f} min")
    for name, process in processes.items():
        series = samples[name]
        errors = [line for line in process.logs().splitlines() if '"level": "error"' in line]
        print(
            f"  {name}: RSS {series[0][1]:.1f} → {series[-1][1]:.1f} MiB, slope "
            f"{slope_per_minute(series):+.2f} MiB/min, {len(errors)} error line(s)"
        )
        for line in errors[:5]:
            print(f"    {line[:200]}")


async def _drain(ws: ClientConnection) -> None:
    async for _ in ws:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second [200]")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    parser.add_argument("--soak", action="store_true", help="run the soak instead of the fault scenarios")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--requests", type=float, default=20.0, help="requests per second in the soak [20]")
    args = parser.parse_args()
    if args.soak:
        soak(args.minutes, args.connections, args.rate, args.requests)
        return
    for key in args.scenario or sorted(SCENARIOS):
        scenario(key, args.rate, args.json)


if __name__ == "__main__":
    main()
