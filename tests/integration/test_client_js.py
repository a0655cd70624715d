"""Runs the JS client's tests (clients/js/test/*.test.mjs, Node's built-in runner) against a real stack.

The stack is a worker and two gateways (the second allows one connection per user, for the 4008 case);
the Node tests get their URLs, the JWT secret and the AMQP URL through the environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from herald_ops.testing.client import running_stack
from herald_ops.testing.stack import ROOT, TEST_JWT_SECRET

NODE = shutil.which("node")


def node_command() -> list[str]:
    """``node --test`` over clients/js/test; Node < 22 needs ``--experimental-websocket``."""
    if NODE is None:
        pytest.fail("node (≥ 20) is not installed: CI must install it for the JS client tests")
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    if major < 20:
        pytest.fail(f"Node {version.strip()} is too old: the JS client tests need Node ≥ 20")
    flags = ["--experimental-websocket"] if major < 22 else []
    return [NODE, *flags, "--test", "--test-reporter=spec", "clients/js/test/"]


def test_js_client_against_a_real_gateway() -> None:
    with running_stack() as (stack, gateway):
        limited = stack.start_gateway(max_connections_per_user=1)
        env = {
            **os.environ,
            "HERALD_TEST_WS_URL": gateway.ws_url,
            "HERALD_TEST_WS_URL_MAX1": limited.ws_url,
            "HERALD_TEST_JWT_SECRET": TEST_JWT_SECRET,
            "HERALD_TEST_AMQP_URL": stack.amqp_url,
            "HERALD_TEST_PYTHON": sys.executable,
            "HERALD_TEST_VHOST": stack.name,
        }
        run = subprocess.run(node_command(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"node --test failed:\n{report[-6000:]}"
    passed = re.search(r"^ℹ pass (\d+)", report, re.MULTILINE)
    assert passed is not None, report[-2000:]
    assert int(passed.group(1)) >= 19, report[-2000:]  # client, scripted and unit tests all ran
