"""``herald dev``: migrate, worker, gateway, api and delivery in the foreground; Ctrl-C stops them all."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx
import jwt
import orjson

from herald_ops.testing.stack import TEST_JWT_SECRET, free_port, http_get, http_status, wait_until_sync

if TYPE_CHECKING:
    from herald_ops.testing.stack import Stack


def test_dev_runs_everything_and_stops_on_ctrl_c(fresh_stack: Stack) -> None:
    gateway_port, worker_port, api_port, delivery_port = free_port(), free_port(), free_port(), free_port()
    env = fresh_stack.env(
        gateway_port=gateway_port,
        worker_http_port=worker_port,
        api_port=api_port,
        delivery_http_port=delivery_port,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "herald_ops.cli", "dev", "--user", "ada"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("Press Ctrl-C") for line in lines):
            assert time.monotonic() < deadline, f"herald dev printed no banner: {lines}"
            line = proc.stdout.readline()
            assert line, f"herald dev exited early with {proc.wait()}: {lines}"
            lines.append(line.strip())

        assert f"demo inbox:  http://127.0.0.1:{gateway_port}/" in lines
        token = lines[lines.index("dev token for 'ada' (admin, 24 h):") + 1]
        claims = jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"])
        assert claims["sub"] == "ada"
        assert claims["roles"] == ["admin"]

        assert http_status(f"http://127.0.0.1:{gateway_port}/readyz") == 200
        wait_until_sync(
            lambda: http_status(f"http://127.0.0.1:{worker_port}/readyz") == 200, 30, "worker ready"
        )
        wait_until_sync(
            lambda: http_status(f"http://127.0.0.1:{delivery_port}/readyz") == 200, 30, "delivery ready"
        )
        status, page = http_get(f"http://127.0.0.1:{gateway_port}/")
        assert status == 200
        assert b"<html" in page.lower()
        status, _ = http_get(f"http://127.0.0.1:{gateway_port}/dev/token?user=ada")
        assert status == 200, "herald dev turns dev tokens on"
        api = f"http://127.0.0.1:{api_port}"
        assert any(line.startswith(f"http api:    {api}/api/notifications/realtime") for line in lines)
        count = httpx.get(
            f"{api}/api/notifications/realtime/unread-count", headers={"Authorization": f"Bearer {token}"}
        )
        assert count.json().items() >= {"count": 0}.items()

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert http_status(f"http://127.0.0.1:{gateway_port}/healthz") is None
        assert http_status(f"http://127.0.0.1:{worker_port}/healthz") is None
        assert http_status(f"{api}/healthz") is None
        assert http_status(f"http://127.0.0.1:{delivery_port}/healthz") is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SEND_ARGS = ("--type", "NEW_REPLY", "--title", "Someone replied")


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line of ``proc``'s stdout, failing after ``timeout`` seconds instead of hanging."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return proc.stdout.readline()


def test_tail_prints_the_live_stream(fresh_stack: Stack) -> None:
    fresh_stack.start_worker()
    gateway = fresh_stack.start_gateway()
    tail = subprocess.Popen(
        [sys.executable, "-m", "herald_ops.cli", "tail", "--user", "u-tail", "--url", gateway.ws_url],
        env=fresh_stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert tail.stdout is not None
        assert orjson.loads(read_line(tail, 30))["method"] == "connected"
        sent = subprocess.run(
            [sys.executable, "-m", "herald_ops.cli", "send", "--user", "u-tail", *SEND_ARGS],
            env=fresh_stack.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        frame = orjson.loads(read_line(tail, 30))
        assert frame["method"] == "notification:new"
        assert frame["params"]["title"] == "Someone replied"
        assert frame["params"]["seq"] == 1
    finally:
        tail.send_signal(signal.SIGINT)
        try:
            tail.wait(15)
        except subprocess.TimeoutExpired:
            tail.kill()
            tail.wait()
