"""The ``herald`` command: schema, development tools and operations.

Subcommands:
    migrate     apply ``sql/`` scripts (creates the database when missing)
    token       mint a development JWT with ``HERALD_JWT_SECRET``
    send        publish one event to ``herald.events`` (publisher confirms)
    tail        print a user's live stream through the gateway
    dev         migrate, then run one worker and one gateway in the foreground until Ctrl-C
    dlq         inspect, replay or purge dead-lettered events
    broker      create the RabbitMQ users of each role with least-privilege permissions

Every subcommand reads the same ``HERALD_*`` settings as the services and returns a process exit code:
0 done, 1 failed (one line, ``herald <command>: <reason>``), 2 a usage or configuration error (argparse's
message, or ``herald: configuration error: HERALD_<NAME>: <reason>``). No known failure prints a
traceback: :func:`main` turns each into its line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiormq
import orjson

from herald_client.errors import HeraldClosedError
from herald_client.urls import url_problem
from herald_ops import broker, dev, dlq, vapid
from herald_ops import migrate as migrate_module
from shared.settings import ConfigError, exit_with_config_error, load_settings
from shared.tokens import TokenError, mint_dev_token

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


# The subcommands' known failures, each reported as `herald <command>: <reason>` with exit status 1.
_FAILURES = (
    dlq.DeadLetterError,
    broker.BrokerError,
    aiormq.exceptions.AMQPError,
    OSError,
    HeraldClosedError,  # `tail`: the gateway refused the token or the connection, or stopped the client
)
# The subcommands that connect to RabbitMQ with HERALD_AMQP_URL, which main() checks first.
_BROKER_CLIENTS = frozenset({"send", "dlq", "dev"})


def _seconds(text: str) -> float:
    """``--ttl``: ``float()`` takes ``nan``, ``inf`` and negatives, none of which is a token lifetime."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    # Below one second the expiry, counted in whole seconds, is the issue time: a token born expired.
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, at least 1 (got {text!r})")
    return value


def _websocket_url(text: str) -> str:
    """``tail --url``: checked here, as the client would retry a URL it cannot parse forever."""
    problem = url_problem(text, ("ws", "wss"))
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _cmd_migrate(args: argparse.Namespace) -> int:
    return migrate_module.run(sql_dir=args.sql_dir)


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
    except (InvalidEvent, PublishError) as exc:
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
        # Only Ctrl-C ends `tail` by choice: a client that stopped on its own (4008, tokens refused on a
        # reconnect) is a failure, which a supervisor or a script has to see.
        raise HeraldClosedError("the client stopped", client.close_code, client.close_reason)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``herald`` with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="herald", description="Herald real-time notification service")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = sub.add_parser("migrate", help="apply the SQL schema")
    migrate.add_argument(
        "--sql-dir",
        type=Path,
        help="the directory of the NNN_name.sql scripts [the sql/ shipped with Herald]",
    )
    migrate.set_defaults(handler=_cmd_migrate)

    token = sub.add_parser("token", help="mint a development JWT (HS256, HERALD_JWT_SECRET)")
    token.add_argument("--user", required=True, help="the user id (sub claim)")
    token.add_argument("--admin", action="store_true", help="add roles: [admin]")
    token.add_argument("--ttl", type=_seconds, default=3600.0, help="seconds until expiry [3600]")
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
    tail.add_argument(
        "--url", type=_websocket_url, help="gateway WebSocket URL [from HERALD_GATEWAY_HOST/PORT]"
    )
    tail.add_argument("--ttl", type=_seconds, default=3600.0, help="token lifetime in seconds [3600]")
    tail.set_defaults(handler=_cmd_tail)

    dev_parser = sub.add_parser("dev", help="migrate, then every process in the foreground; Ctrl-C stops all")
    dev_parser.add_argument("--user", default="demo", help="user id of the printed dev token [demo]")
    dev_parser.set_defaults(handler=dev.run)

    dlq.register(sub)
    vapid.register(sub)
    broker.register(sub)
    return parser


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HeraldClosedError) and exc.reason not in str(exc):
        # The gateway's close code and reason say why (4401 and its token error, 4008).
        return f"{exc} ({exc.code}: {exc.reason})" if exc.code is not None else f"{exc}: {exc.reason}"
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.OpenOk" in str(exc):
        # RabbitMQ answers the connection's opening with a close when the vhost is missing or the user
        # may not use it; aiormq reports only the unexpected frame, not the broker's reason.
        return (
            "the broker refused to open the connection: does the vhost of HERALD_AMQP_URL exist, "
            "and may its user use it?"
        )
    return str(exc) or exc.__class__.__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``herald`` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    # aiormq logs a failed connection attempt before raising what is reported below; with no logging
    # configured, Python prints that record bare on stderr, a second line for the same failure.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
    try:
        if args.command in _BROKER_CLIENTS:
            # Checked first: aio-pika's robust connection (`send`) retries a URL it cannot parse forever.
            problem = url_problem(load_settings().amqp_url, ("amqp", "amqps"))
            if problem is not None:
                raise ConfigError(f"HERALD_AMQP_URL: {problem}")
        return handler(args)
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    except _FAILURES as exc:
        print(f"herald {args.command}: {_reason(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
