"""``herald dev``: the whole service on one machine, in the foreground, for a development loop.

Migrates, starts one worker, one gateway, one HTTP API and one ``herald-delivery`` as child processes
(each in its own session, so Ctrl-C reaches only this process, which then stops them in order), waits
for the gateway's and the API's ``/readyz``, prints the URLs and an admin dev token, and stops
everything when one child exits or on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from herald_ops import migrate as migrate_module
from shared.settings import load_settings
from shared.tokens import mint_dev_token
from worker.delivery.settings import load_delivery_settings
from worker.vapid import new_key_pair

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


def _wait_ready(url: str, child: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _stop(children: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run(args: argparse.Namespace) -> int:
    """``herald dev``: migrate, start a worker, a gateway, an API and a delivery process; print the URLs."""
    settings = load_settings()
    env = dict(os.environ, HERALD_DEV_TOKENS="1")
    if settings.jwt_secret is None:
        # A throwaway secret: dev tokens die with the session, which is what a dev loop wants.
        env["HERALD_JWT_SECRET"] = secrets.token_urlsafe(32)
    if settings.vapid_private_key is None:
        # A throwaway VAPID key too: browsers subscribed during the session push through it.
        env["HERALD_VAPID_PRIVATE_KEY"] = new_key_pair()[0]
    if migrate_module.run(settings.database_url) != 0:
        return 1
    # The secret may come from a .env file, which the processes read too: only a throwaway one is passed.
    dev_settings = (
        settings if settings.jwt_secret is not None else load_settings(jwt_secret=env["HERALD_JWT_SECRET"])
    )
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"
    api = f"http://{settings.api_host}:{settings.api_port}"
    # Own sessions: Ctrl-C reaches only this process, which then stops the children in order.
    children = [
        subprocess.Popen([sys.executable, "-m", module], env=env, start_new_session=True)
        for module in ("worker", "gateway", "gateway.api", "worker.delivery")
    ]
    stopping = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        for name, url, child in (("gateway", base, children[1]), ("api", api, children[2])):
            if not _wait_ready(f"{url}/readyz", child, timeout=30):
                print(f"herald dev: the {name} did not become ready; see its log above", file=sys.stderr)
                return 1
        token = mint_dev_token(dev_settings, args.user, admin=True, ttl=24 * 3600)
        ws_url = f"ws://{settings.gateway_host}:{settings.gateway_port}/notifications"
        metrics_url = f"http://{settings.worker_http_host}:{settings.worker_http_port}/metrics"
        delivery = load_delivery_settings()
        delivery_url = f"http://{delivery.delivery_http_host}:{delivery.delivery_http_port}/metrics"
        lines = [
            "",
            "Herald is running.",
            f"  demo inbox:  {base}/",
            f"  websocket:   {ws_url}",
            f"  http api:    {api}/api/notifications/realtime  (OpenAPI: {api}/api/openapi.json)",
            f"  worker:      {metrics_url}",
            f"  delivery:    {delivery_url} (email needs HERALD_SMTP_URL)",
            f"  dev token for {args.user!r} (admin, 24 h):",
            f"    {token}",
            f"  try:         herald send --user {args.user} --type COURSE_NEW_CONTENT --title Hello",
            "Press Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("herald dev: a process exited; stopping the others", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        _stop(children)
