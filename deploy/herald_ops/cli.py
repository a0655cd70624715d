"""The ``herald`` command: schema, development tools and operations.

Subcommands:
    migrate     apply ``sql/`` scripts (creates the database when missing)
    token       mint a development JWT with ``HERALD_JWT_SECRET``
    send        publish one event to ``herald.events`` (publisher confirms)
    tail        print a user's live stream through the gateway
    dev         migrate, then run one worker and one gateway in the foreground until Ctrl-C
    dlq         inspect, replay or purge dead-lettered events
    broker      create the RabbitMQ users of each role with least-privilege permissions

Every subcommand reads the same ``HERALD_*`` settings as the services and returns a process exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

import orjson

from herald_ops import broker, dev, dlq, vapid
from herald_ops import migrate as migrate_module
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


def _action(text: str) -> dict[str, str]:
    """``ID=LABEL`` or ``ID=LABEL=URL`` (``--action``) as an action object."""
    action_id, _, rest = text.partition("=")
    label, _, url = rest.partition("=")
    return {"id": action_id, "label": label} | ({"url": url} if url else {})


def _cmd_send(args: argparse.Namespace) -> int:
    from herald_client.producer import InvalidEvent, Producer, PublishError

    settings = load_settings()
    try:
        data = orjson.loads(args.data) if args.data else None
    except orjson.JSONDecodeError as exc:
        print(f"herald send: --data is not valid JSON: {exc.msg}", file=sys.stderr)
        return 2

    async def publish() -> str:
        async with Producer(settings.amqp_url, settings.amqp_prefix, args.source) as producer:
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
                url=args.url,
                actions=[_action(text) for text in args.action] or None,
                collapse_key=args.collapse_key,
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
_CLIENT_BOOKKEEPING_EVENTS = frozenset({"state", "unread", "unseen"})


def _cmd_tail(args: argparse.Namespace) -> int:
    from herald_client.client import Event, HeraldClient

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
    send.add_argument("--source", help="the producer's name: scopes --event-id to it")
    send.add_argument("--channels", help="comma-separated subset of in_app,email,push")
    send.add_argument("--url", help="the notification's click target (http or https)")
    send.add_argument(
        "--action", action="append", default=[], help="a button, ID=LABEL or ID=LABEL=URL (up to 3)"
    )
    send.add_argument("--collapse-key", help="update the user's unread notification with this key instead")
    send.set_defaults(handler=_cmd_send)

    tail = sub.add_parser("tail", help="print a user's live stream (mints a dev token)")
    tail.add_argument("--user", required=True)
    tail.add_argument("--url", help="gateway WebSocket URL [from HERALD_GATEWAY_HOST/PORT]")
    tail.add_argument("--ttl", type=float, default=3600.0, help="token lifetime in seconds [3600]")
    tail.set_defaults(handler=_cmd_tail)

    dev_parser = sub.add_parser("dev", help="migrate, then every process in the foreground; Ctrl-C stops all")
    dev_parser.add_argument("--user", default="demo", help="user id of the printed dev token [demo]")
    dev_parser.set_defaults(handler=dev.run)

    dlq.register(sub)
    vapid.register(sub)
    broker.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``herald`` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
