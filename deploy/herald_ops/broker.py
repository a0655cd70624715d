"""``herald broker setup``: one RabbitMQ user per role, each allowed only what the role needs.

Roles and their permissions (configure / write / read regexes on a vhost, for prefix ``herald``):

- ``gateway``: declares ``herald.users``, ``herald.broadcast``, the per-user exchanges and its own
  server-named queue (``amq.gen-*``); binds them; consumes its queue and RPC replies; publishes requests
  through the default exchange (``amq.default``). It sets the AMQP ``user_id`` of every request, which
  the broker checks against the connection's user, so the worker knows a request came from a gateway.
- ``worker``: everything under the prefix (it declares the topology), plus replies through the default
  exchange.
- ``delivery``: the email/push senders: their own ``herald.deliveries.*`` queues, bound to and consumed
  from ``herald.deliveries``.
- ``producer``: writes to ``herald.events`` only — no configure, no read, no default exchange (through
  which ``herald.rpc`` and the gateways' queues would be reachable). Producers must publish to the events
  exchange. With ``--producer-declares`` it may also declare ``herald.events``: NestJS's ``ClientRMQ``
  declares the exchange it publishes to on every connect, and RabbitMQ refuses a declare, even of an
  existing equivalent exchange, without configure permission (which also permits deleting it).
- ``monitor``: nothing at all, which still lets it into the vhost: a passive queue declare, which is how
  an autoscaler (KEDA) or a probe reads a queue's length, needs no permission.

``herald-api`` connects as the gateway user: it publishes requests exactly as the gateways do, and the
worker serves only that user's.

The command runs ``rabbitmqctl`` (on a broker node, or with ``--node``), prints each role's user and a
generated password once (hex digits: a password must not read as a ``rabbitmqctl`` option, and every user
name and password also follows ``--``, which ends option parsing), and is idempotent: an existing user
gets a new password only with ``--rotate``. ``--print`` only prints the ``rabbitmqctl`` lines, for review
or a runbook. The worker then accepts requests only from the gateway user: set
``HERALD_RPC_TRUSTED_USERS`` to it.
"""

from __future__ import annotations

import re
import secrets
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shared.settings import load_settings

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

ROLES: Final = ("gateway", "worker", "delivery", "producer", "monitor")


@dataclass(frozen=True, slots=True)
class Permission:
    """``rabbitmqctl set_permissions`` regexes of one role."""

    configure: str
    write: str
    read: str


def permissions(prefix: str, producer_declares: bool = False) -> dict[str, Permission]:
    """Each role's permissions for the topology named by ``prefix`` (``HERALD_AMQP_PREFIX``).

    Args:
        prefix: the topology's names' prefix.
        producer_declares: let the producer declare (and so delete) ``herald.events``, which NestJS's
            ``ClientRMQ`` needs; without it the producer's configure permission is empty.
    """
    p = re.escape(prefix)
    return {
        "gateway": Permission(
            configure=rf"^({p}\.users|{p}\.broadcast|{p}\.user\..+|amq\.gen-.+)$",
            write=rf"^({p}\.user\..+|amq\.gen-.+|amq\.default)$",
            read=rf"^({p}\.users|{p}\.broadcast|{p}\.user\..+|amq\.gen-.+|amq\.rabbitmq\.reply-to)$",
        ),
        "worker": Permission(configure=rf"^{p}\..+$", write=rf"^({p}\..+|amq\.default)$", read=rf"^{p}\..+$"),
        # herald.deliveries itself too: a consumer's start declares its exchange (refused without configure
        # even when it exists); amq.default: dead letters go to herald.deliveries.dead by queue name.
        "delivery": Permission(
            configure=rf"^{p}\.deliveries(\..+)?$",
            write=rf"^({p}\.deliveries\..+|amq\.default)$",
            read=rf"^{p}\.deliveries(\..+)?$",
        ),
        "producer": Permission(
            configure=rf"^{p}\.events$" if producer_declares else "^$", write=rf"^{p}\.events$", read="^$"
        ),
        "monitor": Permission(configure="^$", write="^$", read="^$"),
    }


def new_password() -> str:
    """A generated password: 192 random bits as hex, which never starts with ``-`` (an option)."""
    return secrets.token_hex(24)


def commands(
    vhost: str,
    prefix: str,
    users: dict[str, str],
    passwords: dict[str, str],
    producer_declares: bool = False,
) -> list[list[str]]:
    """The ``rabbitmqctl`` argument lists creating each role's user (``users[role]``) and permissions
    (``producer_declares``: see :func:`permissions`).

    The positional arguments follow ``--``: a password such as ``-KF0…`` would otherwise be parsed as an
    option and the command refused ("Invalid options for this command").
    """
    lines: list[list[str]] = []
    for role, permission in permissions(prefix, producer_declares).items():
        if role in passwords:
            lines.append(["add_user", "--", users[role], passwords[role]])
        lines.append(
            [
                "set_permissions",
                "-p",
                vhost,
                "--",
                users[role],
                permission.configure,
                permission.write,
                permission.read,
            ]
        )
    return lines


def password_changes(users: dict[str, str], passwords: dict[str, str]) -> list[list[str]]:
    """The ``rabbitmqctl change_password`` argument lists giving ``users[role]`` ``passwords[role]``."""
    return [["change_password", "--", users[role], password] for role, password in passwords.items()]


class BrokerError(RuntimeError):
    """``rabbitmqctl`` is missing, hung, or refused a command (the message never holds a password)."""


_RABBITMQCTL_TIMEOUT: Final = 60.0


def _rabbitmqctl(node: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    node_args = ["--node", node] if node else []
    try:
        return subprocess.run(
            ["rabbitmqctl", "-q", *node_args, *args],
            capture_output=True,
            text=True,
            timeout=_RABBITMQCTL_TIMEOUT,
        )
    except FileNotFoundError as exc:
        raise BrokerError(
            "rabbitmqctl is not on PATH: run this on a broker node, or pass --print and run its lines there"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"rabbitmqctl {args[0]} did not finish in {_RABBITMQCTL_TIMEOUT:.0f} s: is the node up?"
        ) from exc


def _checked(done: subprocess.CompletedProcess[str], command: str) -> subprocess.CompletedProcess[str]:
    if done.returncode != 0:
        # The arguments are not echoed: some are passwords.
        raise BrokerError(f"rabbitmqctl {command} failed: {done.stderr.strip()}")
    return done


def _existing_users(node: str | None) -> set[str]:
    # A failed listing must not read as "no users": every user would then be added again, and refused.
    listed = _checked(_rabbitmqctl(node, "list_users", "--no-table-headers"), "list_users")
    return {line.split("\t")[0] for line in listed.stdout.splitlines() if line.strip()}


def _run_per_user(node: str | None, lines: list[list[str]]) -> None:
    """Run ``lines``: each user's in order, different users' at the same time (every ``rabbitmqctl``
    call starts an Erlang VM, about 1.5 s).

    Raises:
        BrokerError: the first failure (each user's chain stops at its own).
    """
    by_user: dict[str, list[list[str]]] = {}
    for line in lines:
        by_user.setdefault(line[line.index("--") + 1], []).append(line)

    def run(chain: list[list[str]]) -> BrokerError | None:
        try:
            for line in chain:
                _checked(_rabbitmqctl(node, *line), line[0])
        except BrokerError as exc:
            return exc  # returned, not raised: the other users' chains still run to their end
        return None

    with ThreadPoolExecutor(max_workers=max(len(by_user), 1)) as pool:
        outcomes = list(pool.map(run, by_user.values()))
    failure = next((outcome for outcome in outcomes if outcome is not None), None)
    if failure is not None:
        raise failure


def setup(args: argparse.Namespace) -> int:
    """Handler of ``herald broker setup``: exit 0 when every user and permission is in place.

    Raises:
        BrokerError: reported by :func:`herald_ops.cli.main`.
    """
    prefix = load_settings().amqp_prefix
    users = {role: f"{args.name_prefix}-{role}" for role in ROLES}
    existing = set() if args.print_only else _existing_users(args.node)
    fresh = {role: new_password() for role in ROLES if users[role] not in existing}
    lines = commands(args.vhost, prefix, users, fresh, args.producer_declares)
    if args.print_only:
        for line in lines:
            print(shlex.join(["rabbitmqctl", *line]))
        return 0
    rotated = {role: new_password() for role in ROLES if args.rotate and users[role] in existing}
    lines += password_changes(users, rotated)
    _run_per_user(args.node, lines)
    for role in ROLES:
        password = fresh.get(role) or rotated.get(role)
        shown = password if password is not None else "(unchanged)"
        print(f"{role}\t{users[role]}\t{shown}")
    print(f"set HERALD_RPC_TRUSTED_USERS={users['gateway']} on the workers", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``broker setup``; the handler is ``args.handler(args) -> int``."""
    broker = subparsers.add_parser("broker", help="RabbitMQ users and permissions per role")
    actions = broker.add_subparsers(dest="broker_action", required=True, metavar="{setup}")
    setup_parser = actions.add_parser("setup", help="create one user per role (gateway, worker, ...)")
    setup_parser.add_argument("--vhost", default="/", help="the vhost Herald runs in [/]")
    setup_parser.add_argument("--name-prefix", default="herald", help="users are <prefix>-<role> [herald]")
    setup_parser.add_argument("--node", help="rabbitmqctl --node (default: the local node)")
    setup_parser.add_argument("--rotate", action="store_true", help="new passwords for existing users")
    setup_parser.add_argument(
        "--producer-declares",
        action="store_true",
        help="let the producer user declare herald.events, as NestJS's ClientRMQ does on every connect",
    )
    setup_parser.add_argument(
        "--print", dest="print_only", action="store_true", help="only print the rabbitmqctl lines"
    )
    setup_parser.set_defaults(handler=setup)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m herald_ops.broker setup ...`` (the same as ``herald broker setup ...``)."""
    from herald_ops.cli import main as herald  # not at the top: the cli module imports this one

    return herald(["broker", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
