"""``herald dev``: migrate + worker + gateway in the foreground; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import jwt

from tests.support import TEST_JWT_SECRET, free_port, http_get, http_status, wait_until_sync

if TYPE_CHECKING:
    from tests.support import Stack


def test_dev_runs_everything_and_stops_on_ctrl_c(fresh_stack: Stack) -> None:
    gateway_port, worker_port = free_port(), free_port()
    env = fresh_stack.env(gateway_port=gateway_port, worker_http_port=worker_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "dev", "--user", "ada"],
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
        status, page = http_get(f"http://127.0.0.1:{gateway_port}/")
        assert status == 200
        assert b"<html" in page.lower()
        status, _ = http_get(f"http://127.0.0.1:{gateway_port}/dev/token?user=ada")
        assert status == 200, "herald dev turns dev tokens on"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert http_status(f"http://127.0.0.1:{gateway_port}/healthz") is None
        assert http_status(f"http://127.0.0.1:{worker_port}/healthz") is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
