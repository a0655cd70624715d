"""What a gateway that dies costs the broker: ``--users`` connected users, then SIGKILL; how long until
RabbitMQ has cleaned up?

Starts its own vhost + database, one worker and one gateway, connects ``--users`` raw clients with tokens
(one user each) and waits until every one got ``connected``, so every user's exchange is bound to the
gateway's queues. It then kills the gateway without warning. The broker deletes the exclusive queues of
the dead connection, their bindings, and every per-user exchange that this leaves without a binding.
Printed: the seconds until no ``herald.user.*`` exchange is left in the vhost, and the broker's CPU
seconds meanwhile (when it runs on this machine). Publishes routed through those bindings wait meanwhile
(rabbitmq/rabbitmq-server#12926), so this is how long a crash slows the broker for everyone.

    .venv/bin/python -m bench.gateway_crash [--users 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.raw_clients import (
    Tally,
    close_clients,
    open_clients,
    user_exchanges_left,
    wait_first_frames,
    wait_unbound,
)
from herald_ops.testing.measure import cpu_seconds, load_average, local_broker_pid
from herald_ops.testing.stack import Stack, fresh_id, mint, stack_context

#: Seconds the broker gets to clean up before the benchmark gives up.
CLEANUP_DEADLINE = 1200.0


async def run(stack: Stack, count: int) -> None:
    stack.start_worker()
    gateway = stack.start_gateway(rate_limit_per_second=1_000_000, rate_limit_burst=1_000_000)
    paths = [f"/notifications?token={mint(fresh_id('crash'))}" for _ in range(count)]
    clients = await open_clients(gateway.port, paths, Tally())
    await wait_first_frames(clients)
    exchanges = await asyncio.to_thread(user_exchanges_left, stack.name)
    print(f"{len(clients)} users connected, {exchanges} user exchanges bound", flush=True)
    broker = local_broker_pid()
    cpu_before = cpu_seconds(broker) if broker is not None else 0.0
    started = time.perf_counter()
    gateway.kill()
    close_clients(clients)
    await wait_unbound(stack.name, CLEANUP_DEADLINE)
    wall = time.perf_counter() - started
    cpu = f", broker CPU {cpu_seconds(broker) - cpu_before:.1f} s" if broker is not None else ""
    print(f"cleaned up {wall:.1f} s after the kill{cpu} (load average {load_average():.1f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000, help="users connected when the gateway dies")
    arguments = parser.parse_args()
    with stack_context("herald_bench") as bench_stack:
        asyncio.run(run(bench_stack, arguments.users))
