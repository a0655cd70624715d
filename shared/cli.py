"""The ``herald`` command: schema, development tools and operations.

Subcommands:
    migrate     apply ``sql/`` scripts (creates the database when missing)
    token       mint a development JWT with ``HERALD_JWT_SECRET``
    send        publish one event to ``herald.events`` (publisher confirms)
    tail        print a user's live stream through the gateway
    dev         migrate, then run one worker and one gateway in the foreground until Ctrl-C
    dlq         inspect, replay or purge dead-lettered events

Every subcommand reads the same ``HERALD_*`` settings as the services and returns a process exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import orjson

from shared import dlq
from shared import migrate as migrate_module
from shared.events import InvalidEvent
from shared.settings import load_settings
from shared.tokens import TokenError, mint_dev_token

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def _cmd_migrate(args: argparse.Namespace) -> int:
    return migrate_module.run()


def _cmd_token(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        print(mint_dev_token(settings, args.user, admin=args.admin, ttl=args.ttl))
    except TokenError as exc:
        print(f"herald token: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_send(args: argparse.Namespace) -> int:
    from shared.producer import Producer, PublishError

    settings = load_settings()
    try:
        data = orjson.loads(args.data) if args.data else None
    except orjson.JSONDecodeError as exc:
        print(f"herald send: --data is not valid JSON: {exc.msg}", file=sys.stderr)
        return 2

    async def publish() -> str:
        async with Producer(settings.amqp_url, settings.amqp_prefix) as producer:
            if args.broadcast:
                return await producer.broadcast(
                    args.type, args.title, args.message, data=data, event_id=args.event_id
                )
            return await producer.send(
                args.user,
                args.type,
                args.title,
                args.message,
                data=data,
                event_id=args.event_id,
                channels=args.channels.split(",") if args.channels else None,
            )

    if not args.broadcast and not args.user:
        print("herald send: --user is required (or --broadcast)", file=sys.stderr)
        return 2
    try:
        event_id = asyncio.run(publish())
    except (InvalidEvent, PublishError, OSError) as exc:
        print(f"herald send: {exc}", file=sys.stderr)
        return 1
    print(f"sent {event_id}")
    return 0


# The client's own state-keeping events; `tail` prints what the server sent.
_CLIENT_BOOKKEEPING_EVENTS = frozenset({"state", "unread"})


def _cmd_tail(args: argparse.Namespace) -> int:
    from shared.client import Event, HeraldClient

    settings = load_settings()

    def fresh_token() -> str:
        # Minted anew on every (re)connect and refresh, so `tail` outlives any one token.
        return mint_dev_token(settings, args.user, admin=False, ttl=args.ttl)

    try:
        fresh_token()
    except TokenError as exc:
        print(f"herald tail: {exc}", file=sys.stderr)
        return 2
    url = args.url or f"ws://{settings.gateway_host}:{settings.gateway_port}/notifications"

    def print_event(event: Event) -> None:
        if event.method in _CLIENT_BOOKKEEPING_EVENTS:
            return
        line = {"method": event.method, "params": event.params}
        sys.stdout.write(orjson.dumps(line, option=orjson.OPT_UTC_Z).decode() + "\n")
        sys.stdout.flush()

    async def tail() -> None:
        client = HeraldClient(url, fresh_token)
        client.on("*", print_event)  # before start(), so the `connected` frame is printed too
        async with client:
            await client.wait_closed()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        return 0
    return 0


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


def _cmd_dev(args: argparse.Namespace) -> int:
    settings = load_settings()
    env = dict(os.environ, HERALD_DEV_TOKENS="1")
    if settings.jwt_secret is None:
        # A throwaway secret: dev tokens die with the session, which is what a dev loop wants.
        env["HERALD_JWT_SECRET"] = secrets.token_urlsafe(32)
    if migrate_module.run(settings.database_url) != 0:
        return 1
    dev_settings = load_settings(jwt_secret=env["HERALD_JWT_SECRET"])
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"
    # Own sessions: Ctrl-C reaches only this process, which then stops the children in order.
    children = [
        subprocess.Popen([sys.executable, "-m", "worker"], env=env, start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "gateway"], env=env, start_new_session=True),
    ]
    stopping = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        if not _wait_ready(f"{base}/readyz", children[1], timeout=30):
            print("herald dev: the gateway did not become ready; see its log above", file=sys.stderr)
            return 1
        token = mint_dev_token(dev_settings, args.user, admin=True, ttl=24 * 3600)
        ws_url = f"ws://{settings.gateway_host}:{settings.gateway_port}/notifications"
        metrics_url = f"http://{settings.worker_http_host}:{settings.worker_http_port}/metrics"
        lines = [
            "",
            "Herald is running.",
            f"  demo inbox:  {base}/",
            f"  websocket:   {ws_url}",
            f"  worker:      {metrics_url}",
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``herald`` with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="herald", description="Herald real-time notification service")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", help="apply the SQL schema").set_defaults(handler=_cmd_migrate)

    token = sub.add_parser("token", help="mint a development JWT (HS256, HERALD_JWT_SECRET)")
    token.add_argument("--user", required=True, help="the user id (sub claim)")
    token.add_argument("--admin", action="store_true", help="add roles: [admin]")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until expiry [3600]")
    token.set_defaults(handler=_cmd_token)

    send = sub.add_parser("send", help="publish one notification event")
    send.add_argument("--user", action="append", help="recipient user id (repeat for several)")
    send.add_argument("--broadcast", action="store_true", help="send to every known user instead")
    send.add_argument("--type", required=True, help="catalog type, e.g. COURSE_NEW_CONTENT")
    send.add_argument("--title", required=True)
    send.add_argument("--message", default="")
    send.add_argument("--data", help="JSON object attached to the notification")
    send.add_argument("--event-id", help="idempotency key (random by default)")
    send.add_argument("--channels", help="comma-separated subset of in_app,email,push")
    send.set_defaults(handler=_cmd_send)

    tail = sub.add_parser("tail", help="print a user's live stream (mints a dev token)")
    tail.add_argument("--user", required=True)
    tail.add_argument("--url", help="gateway WebSocket URL [from HERALD_GATEWAY_HOST/PORT]")
    tail.add_argument("--ttl", type=float, default=3600.0, help="token lifetime in seconds [3600]")
    tail.set_defaults(handler=_cmd_tail)

    dev = sub.add_parser("dev", help="migrate + worker + gateway in the foreground; Ctrl-C stops all")
    dev.add_argument("--user", default="demo", help="user id of the printed dev token [demo]")
    dev.set_defaults(handler=_cmd_dev)

    dlq.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``herald`` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
