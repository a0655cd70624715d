"""Two workers on one host and one ``HERALD_WORKER_HTTP_PORT``: the second does not share the port (each
scrape would reach one of them at random); it exits at start with one line naming the port."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herald_ops.testing.stack import Stack


def test_a_second_worker_on_a_port_in_use_exits_naming_it(stack: Stack) -> None:
    first = stack.start_worker()
    second = subprocess.run(
        [sys.executable, "-m", "worker"],
        env=stack.env(worker_http_port=first.port),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert f"herald: configuration error: cannot listen for HTTP on 127.0.0.1:{first.port}: " in second.stderr
    assert "Address already in use" in second.stderr
