"""HTTP figures for bench/requests.py: ``herald-api`` list and count beside the floor, all driven by wrk.

The floor is bench/floor_api.py: a bare Starlette + asyncpg + PyJWT endpoint running the worker's page
statement directly (no broker hop). Both are served by uvicorn (uvloop, httptools, one process) and
loaded by the same generator, Debian's ``wrk`` (installed with apt-get when missing), with the same
connections, duration, user and URL (``?page=1&limit=20``), so the ratio is herald-api's cost of going
through the worker.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from herald_ops.testing.stack import HeraldProcess, free_port, mint

if TYPE_CHECKING:
    from herald_ops.testing.stack import Stack

PAGE_PATH: Final = "/api/notifications/realtime?page=1&limit=20"
COUNT_PATH: Final = "/api/notifications/realtime/unread-count"
_UNITS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class HttpOutcome:
    """One wrk run, reported like bench/requests.py's WebSocket outcomes."""

    name: str
    clients: int
    requests: int
    errors: int
    rate: float
    p50_ms: float
    p99_ms: float

    @property
    def answered_rate(self) -> float:
        """Requests a second that got a 2xx or 3xx answer: a refusal (a 429) is not a page served."""
        return self.rate * (self.requests - self.errors) / self.requests if self.requests else 0.0


def ensure_wrk() -> str:
    """The ``wrk`` binary, installed from Debian when missing."""
    found = shutil.which("wrk")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    assert found is not None, "wrk could not be installed"
    return found


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(name: str, url: str, token: str, connections: int, seconds: float) -> HttpOutcome:
    """Run ``wrk`` against ``url`` with a bearer token; parse rate, percentiles and non-2xx answers."""
    output = subprocess.run(
        [
            ensure_wrk(),
            "--threads",
            str(min(2, connections)),
            "--connections",
            str(connections),
            "--duration",
            f"{max(1, round(seconds))}s",
            "--latency",
            "--header",
            f"Authorization: Bearer {token}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    return HttpOutcome(
        name,
        connections,
        total,
        int(errors.group(1)) if errors else 0,
        rate,
        _milliseconds(percentiles["50"]),
        _milliseconds(percentiles["99"]),
    )


def start_floor(stack: Stack) -> HeraldProcess:
    """bench/floor_api.py on a free port, on the stack's database, ready when ``/readyz`` answers."""
    port = free_port()
    env = stack.env()
    env.update(
        FLOOR_PORT=str(port), FLOOR_DATABASE_URL=stack.database_url, FLOOR_JWT_SECRET=env["HERALD_JWT_SECRET"]
    )
    proc = HeraldProcess.start("floor-api", [sys.executable, "-m", "bench.floor_api"], env, port)
    stack.processes.append(proc)
    return proc


def run_http(stack: Stack, user: str, connections: int, seconds: float) -> list[HttpOutcome]:
    """herald-api's list and count, then the floor's list, each for ``seconds`` at ``connections``.

    Every connection is the same user, so herald-api's per-user limits are lifted: its rate limit, and its
    cap on one user's requests awaiting the worker (32 by default), which 50 connections would exceed.
    """
    api = stack.start_api(
        rate_limit_per_second=1_000_000,
        rate_limit_burst=1_000_000,
        max_user_requests_in_flight=max(connections, 1),
    )
    floor = start_floor(stack)
    token = mint(user, ttl=3600)
    outcomes = [
        wrk("HTTP list (herald-api)", f"{api.url}{PAGE_PATH}", token, connections, seconds),
        wrk("HTTP unread-count (herald-api)", f"{api.url}{COUNT_PATH}", token, connections, seconds),
        wrk("HTTP list floor (Starlette+asyncpg)", f"{floor.url}{PAGE_PATH}", token, connections, seconds),
    ]
    api.stop()
    floor.stop()
    return outcomes


def report_http(outcomes: list[HttpOutcome]) -> None:
    """One line per wrk run, then herald-api's list as a share of the floor's."""
    for outcome in outcomes:
        print(
            f"  {outcome.name:36s} connections={outcome.clients} requests={outcome.requests:6d} "
            f"errors={outcome.errors} answered/s={outcome.answered_rate:7.0f} p50={outcome.p50_ms:6.1f}ms "
            f"p99={outcome.p99_ms:6.1f}ms",
            flush=True,
        )
    rates = {outcome.name: outcome.answered_rate for outcome in outcomes}
    share = rates["HTTP list (herald-api)"] / rates["HTTP list floor (Starlette+asyncpg)"]
    print(f"  herald-api list = {share:.0%} of the floor (target: at least 50 %)", flush=True)
