"""``herald`` on malformed input or an unusable broker: one clear line on stderr, never a traceback.

Exit status 2 is a usage error (argparse) or a configuration error (``herald: configuration error:
HERALD_<NAME>: ...``); 1 is a failure at run time (``herald <command>: ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from herald_ops.testing.stack import AMQP_BASE, ROOT, TEST_JWT_SECRET, free_port, fresh_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from herald_ops.testing.stack import Stack

SEND = ("send", "--user", "u-cli", "--type", "GRADE_RELEASED", "--title", "Graded")
#: A gateway's secret other than the one `herald tail` signs its tokens with.
OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256"
assert OTHER_SECRET != TEST_JWT_SECRET


def herald(
    stack: Stack, *args: str, path: str | None = None, **settings: Any
) -> subprocess.CompletedProcess[str]:
    """``herald ARGS`` in ``stack``'s environment, ``settings`` overriding its ``HERALD_*`` variables and
    ``path`` its ``PATH``."""
    env = stack.env(**settings)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "herald_ops.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The last stderr line, after checking the exit status and that nothing printed a traceback
    (also used by test_migrate.py)."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.splitlines()[-1]


def only_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """:func:`error_line`, which must be all of stderr (argparse's errors add their usage line)."""
    line = error_line(result, status)
    assert result.stderr.splitlines() == [line]
    return line


@pytest.mark.parametrize("ttl", ["nan", "inf", "-60", "0"])
def test_token_refuses_a_lifetime_that_is_no_positive_finite_number(stack: Stack, ttl: str) -> None:
    line = error_line(herald(stack, "token", "--user", "alice", f"--ttl={ttl}"), 2)
    assert line.startswith("herald token: error: argument --ttl:")
    assert repr(ttl) in line


def test_tail_refuses_a_url_that_is_no_websocket_url(stack: Stack) -> None:
    line = error_line(herald(stack, "tail", "--user", "alice", "--url", "localhost:8000"), 2)
    assert line.startswith("herald tail: error: argument --url:")
    assert "ws or wss" in line


@pytest.mark.parametrize(
    ("command", "url", "reason"),
    [
        (SEND, "amqp://guest:guest@127.0.0.1:notaport/", "port"),  # aio-pika's URL parser: ValueError
        (SEND, "localhost", "amqp or amqps"),  # aio-pika's robust connection retried this forever
        (("dlq", "list"), "amqp://guest:guest@127.0.0.1:notaport/", "port"),
        (("dlq", "list"), "amqp://guest:guest@/", "no host"),
    ],
)
def test_a_malformed_amqp_url_is_a_configuration_error(
    stack: Stack, command: tuple[str, ...], url: str, reason: str
) -> None:
    line = only_line(herald(stack, *command, amqp_url=url), 2)
    assert line.startswith("herald: configuration error: HERALD_AMQP_URL:")
    assert reason in line
    assert "guest:guest" not in line  # the URL, which may hold a password, is not repeated


@pytest.mark.parametrize("command", [SEND, ("dlq", "list")], ids=["send", "dlq"])
def test_a_vhost_the_broker_does_not_have_is_named_as_the_likely_cause(
    stack: Stack, command: tuple[str, ...]
) -> None:
    result = herald(stack, *command, amqp_url=f"{AMQP_BASE}/{fresh_id('no-such-vhost')}")
    line = only_line(result, 1)
    assert line.startswith(f"herald {command[0]}: the broker refused to open the connection")
    assert "vhost" in line


def test_send_to_a_port_nothing_listens_on_fails_in_one_line(stack: Stack) -> None:
    result = herald(stack, *SEND, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    line = only_line(result, 1)
    assert line.startswith("herald send:")
    assert "Connect call failed" in line


def test_broker_setup_without_rabbitmqctl_says_where_to_run_it(stack: Stack, tmp_path: Path) -> None:
    result = herald(stack, "broker", "setup", path=str(tmp_path))
    line = only_line(result, 1)
    assert line.startswith("herald broker: rabbitmqctl is not on PATH")


def test_tail_refused_by_the_gateway_fails_in_one_line(fresh_stack: Stack) -> None:
    gateway = fresh_stack.start_gateway(jwt_secret=OTHER_SECRET)
    result = herald(fresh_stack, "tail", "--user", "alice", "--url", gateway.ws_url)
    line = only_line(result, 1)
    assert line.startswith("herald tail: authentication refused (4401")


@contextlib.asynccontextmanager
async def connected_tail(stack: Stack, url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`herald tail --user alice` running, once it printed the gateway's ``connected``; killed at exit if
    it is still running."""
    tail = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "herald_ops.cli", "tail", "--user", "alice", "--url", url),
        env=stack.env(),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert tail.stdout is not None
        async with asyncio.timeout(30):
            assert json.loads(await tail.stdout.readline())["method"] == "connected"
        yield tail
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()


async def test_tail_refused_for_too_many_connections_fails_in_one_line(fresh_stack: Stack) -> None:
    gateway = await asyncio.to_thread(fresh_stack.start_gateway, max_connections_per_user=1)
    async with connected_tail(fresh_stack, gateway.ws_url):
        result = await asyncio.to_thread(
            herald, fresh_stack, "tail", "--user", "alice", "--url", gateway.ws_url
        )
    assert only_line(result, 1) == "herald tail: too many connections for this user"


async def test_tail_fails_when_its_client_stops_after_a_working_session(fresh_stack: Stack) -> None:
    """The gateway comes back with another secret: the reconnects' fresh tokens are refused and the
    client stops, which `tail` reports as a failure rather than as a finished command."""
    gateway = await asyncio.to_thread(fresh_stack.start_gateway)
    async with connected_tail(fresh_stack, gateway.ws_url) as tail:
        await asyncio.to_thread(gateway.stop)
        gateway.env["HERALD_JWT_SECRET"] = OTHER_SECRET
        await asyncio.to_thread(gateway.launch)
        async with asyncio.timeout(90):  # the reconnects' backoff is capped at 30 s
            _, stderr = await tail.communicate()
    assert tail.returncode is not None
    result = subprocess.CompletedProcess("herald tail", tail.returncode, "", stderr.decode())
    # Warnings of the client's catch-up (this stack has no worker to answer it) may come first.
    assert error_line(result, 1).startswith("herald tail: the client stopped (4401: authentication failed")
