"""Isolated stacks for tests and benchmarks: vhosts and databases, real Herald processes, deadlines.

Every test session gets its own RabbitMQ vhost and Postgres database (:func:`create_stack`), and tests that
need a clean slate make another one. Processes are the real console entry points run as subprocesses;
they are ready when their ``/readyz`` answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from herald_ops.migrate import migrate
from shared.tokens import mint_token

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

#: The checkout this harness runs from (it serves tests and benchmarks, which run from a checkout).
ROOT = Path(__file__).resolve().parents[3]
AMQP_BASE = os.environ.get("HERALD_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
PG_BASE = os.environ.get("HERALD_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
TEST_JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!"


def fresh_id(prefix: str = "u") -> str:
    """An id (user id, event id, name) that no other test or benchmark run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def mint(
    user_id: str, ttl: float = 3600.0, admin: bool = False, secret: str = TEST_JWT_SECRET, **claims: Any
) -> str:
    """An HS256 token for ``user_id`` signed with the test secret (:func:`shared.tokens.mint_token`)."""
    return mint_token(secret, user_id, admin=admin, ttl=ttl, extra=claims or None)


def rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``rabbitmqctl``; raises on failure when ``check``."""
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=check, timeout=60
    )


def queue_depth(vhost: str, queue: str) -> int:
    """Ready plus unacknowledged messages of ``queue`` in ``vhost`` (0 when it does not exist). A passive
    declare's ``message_count`` counts only the ready ones, not those a consumer holds unacked."""
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages").stdout
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def close_connections(vhost: str, client: str = "") -> int:
    """Close, from the broker side, every connection to ``vhost`` whose client properties contain
    ``client`` (every one by default); return how many. ``close_connection`` takes the connection's
    pid: its name (``host:port -> host:port``) is refused."""
    listing = rabbitmqctl("list_connections", "vhost", "pid", "client_properties").stdout
    pids = [
        line.split("\t")[1]
        for line in listing.splitlines()
        if line.startswith(vhost + "\t") and client in line
    ]
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test: broker-side drop")
    return len(pids)


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: The ports :func:`free_port` hands out: below the kernel's ephemeral range, each pytest-xdist worker
#: (``PYTEST_XDIST_WORKER`` ``gw<N>`` of ``PYTEST_XDIST_WORKER_COUNT``) in a slice of its own.
_PORTS_FROM: Final = 10_000


def _port_slice() -> Iterator[int]:
    # With an ephemeral range that starts below 11,000 (rare), the slices overlap it, as bind(0) always did.
    low, high = _PORTS_FROM, max(_ephemeral_floor(), _PORTS_FROM + 1_000)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (high - low) // max(workers, 1)
    start = low + worker * size
    # From a point of the slice that differs between runs, so a port a run left in use is rarely met.
    offset = (os.getpid() * 7919) % size
    for step in range(size):
        yield start + (offset + step) % size


_ports = _port_slice()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server about to be started.

    Not the kernel's ``bind(0)``: its ports come from the ephemeral range, which outgoing connections
    take from too, so a client socket of a busy test could take the port before the server binds it.
    These ports lie below that range, and each parallel test process has its own slice of them.
    """
    for port in _ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or a socket of an earlier run still closing
            return port
    raise RuntimeError("no free port left in this process's slice")


@dataclass
class Stack:
    """One isolated namespace: a vhost and a database with the schema applied."""

    name: str
    amqp_url: str
    database_url: str
    processes: list[HeraldProcess] = field(default_factory=list)

    def env(self, **overrides: Any) -> dict[str, str]:
        """Environment for a Herald process in this stack; ``overrides`` are ``HERALD_*`` minus prefix."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update(
            HERALD_AMQP_URL=self.amqp_url,
            HERALD_DATABASE_URL=self.database_url,
            HERALD_JWT_SECRET=TEST_JWT_SECRET,
            HERALD_LOG_FORMAT="json",
            HERALD_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        env.update({f"HERALD_{k.upper()}": str(v) for k, v in overrides.items()})
        return env

    def start_worker(self, **overrides: Any) -> HeraldProcess:
        """Start ``python -m worker`` on a free HTTP port and wait until ``/readyz`` answers 200."""
        return self._start("worker", "worker", "worker_http_port", overrides)

    def start_gateway(self, **overrides: Any) -> HeraldProcess:
        """Start ``python -m gateway`` on a free port and wait until ``/readyz`` answers 200."""
        return self._start("gateway", "gateway", "gateway_port", overrides)

    def start_api(self, **overrides: Any) -> HeraldProcess:
        """Start ``python -m gateway.api`` (``herald-api``) on a free port; wait until ``/readyz`` is 200."""
        return self._start("api", "gateway.api", "api_port", overrides)

    def start_delivery(self, **overrides: Any) -> HeraldProcess:
        """Start ``python -m worker.delivery`` on a free HTTP port and wait until ``/readyz`` answers 200."""
        return self._start("delivery", "worker.delivery", "delivery_http_port", overrides)

    def _start(self, name: str, module: str, port_setting: str, overrides: dict[str, Any]) -> HeraldProcess:
        """Start ``python -m <module>`` with its HTTP port free and wait until ``/readyz`` answers 200."""
        port = free_port()
        proc = HeraldProcess.start(
            f"{name}-{len(self.processes)}",
            [sys.executable, "-m", module],
            self.env(**{port_setting: port, **overrides}),
            port,
        )
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.processes:
            proc.stop()
        self.processes.clear()


@dataclass
class HeraldProcess:
    """A Herald subprocess with its HTTP port and log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls, name: str, argv: list[str], env: dict[str, str], port: int, ready: bool = True
    ) -> HeraldProcess:
        log_dir = Path(os.environ.get("HERALD_TEST_LOGS", "/tmp/herald-test-logs"))
        log_dir.mkdir(parents=True, exist_ok=True)
        proc = cls(name, argv, env, port, log_dir / f"{name}-{uuid.uuid4().hex[:8]}.log")
        proc.launch(ready=ready)
        return proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/notifications"

    def launch(self, ready: bool = True) -> None:
        """(Re)start the process; wait for ``/readyz`` unless ``ready`` is false."""
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if ready:
            try:
                self.wait_ready()
            except BaseException:
                self.kill()  # not left running unowned: the caller never gets the object to stop
                raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.logs()}")
            return http_status(f"{self.url}/readyz") == 200

        wait_until_sync(ready, timeout, f"{self.name} ready")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, signum: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.popen and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; return the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


def http_status(url: str) -> int | None:
    """The status code of a GET, or ``None`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET (``(0, b"")`` when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_until_sync(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float, what: str
) -> None:
    """Async twin of :func:`wait_until_sync`; ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def create_stack(prefix: str = "herald_test") -> Stack:
    """A new vhost (guest may use it) and a migrated database, both named after a random id."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    database_url = f"{PG_BASE}/{name}"
    asyncio.run(migrate(database_url))
    return Stack(name, f"{AMQP_BASE}/{name}", database_url)


def destroy_stack(stack: Stack) -> None:
    """Stop the stack's processes, delete its vhost and drop its database."""
    stack.stop_all()
    rabbitmqctl("delete_vhost", stack.name, check=False)

    async def drop() -> None:
        conn = await asyncpg.connect(f"{PG_BASE}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{stack.name}" WITH (FORCE)')
        finally:
            await conn.close()

    with contextlib.suppress(Exception):
        asyncio.run(drop())


@contextlib.contextmanager
def stack_context(prefix: str = "herald_test") -> Iterator[Stack]:
    stack = create_stack(prefix)
    try:
        yield stack
    finally:
        destroy_stack(stack)


def have_rabbitmqctl() -> bool:
    return shutil.which("rabbitmqctl") is not None
