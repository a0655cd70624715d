"""``herald_ops.testing.stack.free_port``: ports that parallel test processes and outgoing connections
never share. Each slice is checked in a fresh interpreter, as a pytest-xdist worker would see it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson

from herald_ops.testing.stack import free_port

EPHEMERAL_FLOOR = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
PROBE = (
    "import orjson; from herald_ops.testing.stack import free_port; "
    "print(orjson.dumps([free_port() for _ in range(50)]).decode())"
)


def ports_of(worker: str, workers: int) -> list[int]:
    """Fifty ports handed out by a fresh process that is ``worker`` of ``workers`` xdist workers."""
    env = os.environ | {"PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": str(workers)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, check=True, timeout=60
    )
    ports: list[int] = orjson.loads(probe.stdout)
    return ports


def test_parallel_workers_get_disjoint_ports_below_the_ephemeral_range() -> None:
    slices = [ports_of(f"gw{number}", 3) for number in range(3)]
    for ports in slices:
        assert len(set(ports)) == len(ports)
        assert all(10_000 <= port < EPHEMERAL_FLOOR for port in ports)
    # Each worker's ports lie in a range of its own: gw0's below gw1's, below gw2's.
    assert max(slices[0]) < min(slices[1])
    assert max(slices[1]) < min(slices[2])


def test_a_port_in_use_is_skipped() -> None:
    """The port after the last one handed out is taken by a listener: the next one handed out is not it,
    and it can be bound."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port() + 1))
        held.listen()
        following = free_port()
        assert following != held.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", following))
