"""``herald dlq list|replay|purge``: inspect and re-publish dead-lettered events.

Events land in the dead-letter queue (``herald.events.dead``) two ways (PROTOCOL §3–4):

- the worker found them invalid and published them to ``herald.dlx`` itself, with the original body and
  properties plus ``x-herald-error`` (the reason), ``x-herald-routing-key`` and ``x-herald-exchange``;
- the broker dead-lettered them after ``x-delivery-limit`` failed deliveries; it adds ``x-death``, whose
  first entry names the original exchange and routing keys.

Contract:

- ``list`` only looks: every message it reads is left unacknowledged and goes back to its place in the
  queue when the channel closes.
- ``replay`` refuses (and leaves in the queue, exit status 1) a letter whose destination is not Herald's
  input — the events exchange with a ``notification.*`` / ``user.*`` key, or the events queue through the
  default exchange — and ignores ``x-herald-*`` headers on letters the broker dead-lettered (they came
  from the producer): see :mod:`shared.deadletter`.
- ``replay`` re-publishes each selected event, with publisher confirms, to the events exchange (or to the
  default exchange when the producer used it, as NestJS producers with ``noAssert`` do) under its
  original routing key, with its original properties — ``message_id`` included, so the worker's
  idempotency key is unchanged and a replayed event never stores a second notification — minus the
  dead-lettering headers. The dead letter is acknowledged only after the broker confirmed the
  re-publication: a crash in between leaves a duplicate, which idempotency absorbs, never a loss.
- ``purge`` deletes the selected dead letters (all of them when no filter is given).
- A walk visits each message that was in the queue when it started at most once, so an event that fails
  again during a replay is not replayed twice by the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aio_pika
import orjson
from aio_pika.exceptions import DeliveryError

from shared.deadletter import ReplayRefused, replay_destination, replay_message
from shared.settings import load_settings
from shared.topology import ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, Topology

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from aio_pika.abc import (
        AbstractChannel,
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractQueue,
    )

PREVIEW_CHARS: Final = 160
#: Replayed events awaiting their publisher confirms at once.
REPLAY_WINDOW: Final = 100


class DeadLetterError(RuntimeError):
    """The dead-letter queue is missing, or the broker refused a re-publication."""


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered event as the queue holds it.

    Attributes:
        position: 1-based place in the queue when the walk started.
        reason: ``x-herald-error``, else ``broker: <x-death reason>`` (e.g. ``delivery_limit``).
        exchange: the exchange the producer published to (``""`` is the default exchange).
        routing_key: the producer's routing key.
    """

    position: int
    reason: str
    exchange: str
    routing_key: str
    message_id: str | None
    body: bytes

    def preview(self, width: int = PREVIEW_CHARS) -> str:
        """The body as one line of text, cut to ``width`` characters."""
        text = self.body.decode("utf-8", errors="replace").replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready description for ``herald dlq list --json``."""
        return {
            "position": self.position,
            "reason": self.reason,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "message_id": self.message_id,
            "body": self.body.decode("utf-8", errors="replace"),
        }


def describe(message: AbstractIncomingMessage, position: int, topology: Topology) -> DeadLetter:
    """Where ``message`` came from and why it was dead-lettered, from its headers."""
    headers: Mapping[str, Any] = message.headers or {}
    deaths = headers.get("x-death")
    first_death: Mapping[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}
    if "x-death" in headers:
        # Dead-lettered by the broker: Herald did not write any x-herald-* header this letter carries.
        headers = {key: value for key, value in headers.items() if not key.startswith("x-herald-")}
    if ERROR_HEADER in headers:
        reason = _text(headers[ERROR_HEADER])
    elif first_death:
        reason = f"broker: {_text(first_death.get('reason', 'unknown'))}"
    else:
        reason = "unknown"
    if ORIGINAL_ROUTING_KEY_HEADER in headers:
        routing_key = _text(headers[ORIGINAL_ROUTING_KEY_HEADER])
    elif first_death.get("routing-keys"):
        routing_key = _text(first_death["routing-keys"][0])
    else:
        routing_key = message.routing_key or ""
    if ORIGINAL_EXCHANGE_HEADER in headers:
        exchange = _text(headers[ORIGINAL_EXCHANGE_HEADER])
    elif "exchange" in first_death:
        exchange = _text(first_death["exchange"])
    else:
        exchange = topology.events_exchange
    return DeadLetter(position, reason, exchange, routing_key, message.message_id, message.body)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command acts on; every given criterion must hold.

    Attributes:
        reason: a substring of the reason (case-insensitive).
        routing_key: the exact original routing key.
        message_ids: only these ``message_id`` values.
        limit: stop after this many matches.
    """

    reason: str | None = None
    routing_key: str | None = None
    message_ids: frozenset[str] | None = None
    limit: int | None = None

    @property
    def everything(self) -> bool:
        return self.reason is None and self.routing_key is None and self.message_ids is None

    def matches(self, letter: DeadLetter) -> bool:
        if self.reason is not None and self.reason.lower() not in letter.reason.lower():
            return False
        if self.routing_key is not None and letter.routing_key != self.routing_key:
            return False
        return self.message_ids is None or letter.message_id in self.message_ids


@contextlib.asynccontextmanager
async def _dead_letter_queue(
    amqp_url: str, topology: Topology
) -> AsyncIterator[tuple[AbstractChannel, AbstractQueue, int]]:
    """A confirming channel, the dead-letter queue and how many messages it held at the start.

    Closing the connection returns every message still unacknowledged to the queue.
    """
    connection = await aio_pika.connect(amqp_url)
    try:
        # A returned (unroutable) publish must raise: otherwise aiormq answers it like a confirm, and the
        # dead letter would be acked with its event dropped by the broker.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise DeadLetterError(
                f"queue {topology.dead_letter_queue} does not exist: no worker has declared the topology"
            ) from exc
        count = queue.declaration_result.message_count or 0
        yield channel, queue, count
    finally:
        await connection.close()


async def _walk(
    queue: AbstractQueue, count: int, selection: Selection, topology: Topology
) -> AsyncIterator[tuple[AbstractIncomingMessage, DeadLetter]]:
    """Yield the selected messages among the first ``count``, each fetched unacknowledged.

    Held messages are not ready, so each ``get`` returns the next one; stopping at ``count`` keeps a
    message that comes back during the walk (re-dead-lettered) from being visited twice.
    """
    taken = 0
    for position in range(1, count + 1):
        if selection.limit is not None and taken >= selection.limit:
            return
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return
        letter = describe(message, position, topology)
        if selection.matches(letter):
            taken += 1
            yield message, letter


async def list_dead_letters(amqp_url: str, topology: Topology, selection: Selection) -> list[DeadLetter]:
    """The selected dead letters, oldest first; the queue is left as it was."""
    async with _dead_letter_queue(amqp_url, topology) as (_, queue, count):
        return [letter async for _, letter in _walk(queue, count, selection, topology)]


async def _republish(
    channel: AbstractChannel,
    events: AbstractExchange,
    window: list[tuple[AbstractIncomingMessage, DeadLetter]],
    topology: Topology,
) -> list[DeadLetter]:
    """Publish a window of dead letters with their confirms in flight together; ack each confirmed one.

    The window holds only letters whose destination :func:`shared.deadletter.replay_destination` allowed.
    """
    outcomes = await asyncio.gather(
        *(
            (channel.default_exchange if letter.exchange == "" else events).publish(
                replay_message(message), routing_key=letter.routing_key, mandatory=True
            )
            for message, letter in window
        ),
        return_exceptions=True,
    )
    done: list[DeadLetter] = []
    refused: DeadLetter | None = None
    for (message, letter), outcome in zip(window, outcomes, strict=True):
        if isinstance(outcome, DeliveryError):
            refused = refused or letter
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            await message.ack()
            done.append(letter)
    if refused is not None:
        raise DeadLetterError(
            f"event #{refused.position} ({refused.message_id}) is unroutable with routing key "
            f"{refused.routing_key!r}; it stays in {topology.dead_letter_queue} "
            f"({len(done)} of this window were replayed)"
        )
    return done


async def replay(
    amqp_url: str, topology: Topology, selection: Selection
) -> tuple[list[DeadLetter], list[tuple[DeadLetter, str]]]:
    """Re-publish the selected dead letters (see the module contract); return those replayed, and those
    refused because their destination is not Herald's input, each with the reason (they stay queued).

    Up to :data:`REPLAY_WINDOW` publications are awaiting their confirms at once.

    Raises:
        DeadLetterError: the broker returned an event as unroutable (no input queue bound); that event
            and the ones not yet replayed stay in the dead-letter queue.
    """
    replayed: list[DeadLetter] = []
    refused: list[tuple[DeadLetter, str]] = []
    async with _dead_letter_queue(amqp_url, topology) as (channel, queue, count):
        events = await channel.get_exchange(topology.events_exchange)
        window: list[tuple[AbstractIncomingMessage, DeadLetter]] = []
        async for item in _walk(queue, count, selection, topology):
            try:
                replay_destination(item[1].exchange, item[1].routing_key, topology)
            except ReplayRefused as exc:
                refused.append((item[1], str(exc)))  # left unacknowledged: back in place at the end
                continue
            window.append(item)
            if len(window) == REPLAY_WINDOW:
                replayed += await _republish(channel, events, window, topology)
                window = []
        if window:
            replayed += await _republish(channel, events, window, topology)
    return replayed, refused


async def purge(amqp_url: str, topology: Topology, selection: Selection) -> int:
    """Delete the selected dead letters; return how many."""
    async with _dead_letter_queue(amqp_url, topology) as (_, queue, count):
        if selection.everything and selection.limit is None:
            result = await queue.purge()
            return int(result.message_count or 0)
        purged = 0
        async for message, _ in _walk(queue, count, selection, topology):
            await message.ack()
            purged += 1
        return purged


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(
        reason=args.reason,
        routing_key=args.routing_key,
        message_ids=frozenset(args.message_id) if args.message_id else None,
        limit=args.limit,
    )


def _print_letter(letter: DeadLetter) -> None:
    print(f"#{letter.position}  {letter.routing_key or '-'}  id={letter.message_id or '-'}  {letter.reason}")
    print(f"    {letter.preview()}")


async def _command(args: argparse.Namespace) -> int:
    settings = load_settings()
    topology = Topology(settings.amqp_prefix)
    selection = _selection(args)
    action: str = args.dlq_action
    if action == "list":
        letters = await list_dead_letters(settings.amqp_url, topology, selection)
        for letter in letters:
            if args.json:
                print(orjson.dumps(letter.as_json()).decode())
            else:
                _print_letter(letter)
        if not args.json:
            print(f"{len(letters)} dead letter(s) shown")
        return 0
    if action == "replay":
        replayed, refused = await replay(settings.amqp_url, topology, selection)
        for letter in replayed:
            _print_letter(letter)
        print(f"replayed {len(replayed)} event(s) to {topology.events_exchange}")
        for letter, why in refused:
            print(f"herald dlq: #{letter.position} not replayed: {why}", file=sys.stderr)
        return 1 if refused else 0
    if not args.yes:
        matching = await list_dead_letters(settings.amqp_url, topology, selection)
        print(f"would purge {len(matching)} dead letter(s); pass --yes to delete them", file=sys.stderr)
        return 1
    print(f"purged {await purge(settings.amqp_url, topology, selection)} dead letter(s)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Handler of ``herald dlq ...``: 0 ok, 1 refused; failures raise, for :func:`herald_ops.cli.main`."""
    return asyncio.run(_command(args))


def _count(text: str) -> int:
    """``--limit``: a limit below 1 would select nothing and report success."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text!r})")
    return value


def _add_filters(parser: argparse.ArgumentParser, limit_default: int | None) -> None:
    parser.add_argument("--reason", help="only dead letters whose reason contains this (case-insensitive)")
    parser.add_argument("--routing-key", help="only dead letters with this original routing key")
    parser.add_argument(
        "--message-id", action="append", help="only this message_id (event_id); repeat for several"
    )
    parser.add_argument(
        "--limit", type=_count, default=limit_default, help=f"at most this many [{limit_default or 'all'}]"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dlq`` with ``list``, ``replay`` and ``purge``; the handler is ``args.handler(args) -> int``."""
    dlq = subparsers.add_parser("dlq", help="inspect, replay or purge dead-lettered events")
    actions = dlq.add_subparsers(dest="dlq_action", required=True, metavar="{list,replay,purge}")
    add: Callable[..., argparse.ArgumentParser] = actions.add_parser
    listing = add("list", help="show dead letters (reason, routing key, body preview); changes nothing")
    _add_filters(listing, limit_default=20)
    listing.add_argument("--json", action="store_true", help="one JSON object a line, full bodies")
    replaying = add("replay", help="re-publish dead letters to the events exchange after a fix")
    _add_filters(replaying, limit_default=None)
    purging = add("purge", help="delete dead letters")
    _add_filters(purging, limit_default=None)
    purging.add_argument("--yes", action="store_true", help="really delete (otherwise only count)")
    dlq.set_defaults(handler=run)


def main(argv: list[str] | None = None) -> int:
    """``python -m herald_ops.dlq list|replay|purge ...`` (the same as ``herald dlq ...``)."""
    from herald_ops.cli import main as herald  # not at the top: the cli module imports this one

    return herald(["dlq", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
