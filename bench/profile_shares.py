"""Shares of a py-spy profile by where the time goes, for the tables of docs/performance.md.

Record a process with ``py-spy record -f raw -o profile.txt --pid PID --nonblocking -d 10`` (collapsed
stacks, busy samples only), then ``python -m bench.profile_shares profile.txt [more.txt ...]``. Each
sample goes to the first rule whose markers all occur in its stack, so a rule list reads from the most
specific to the most general.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

#: (label, markers that must all occur in the stack), first match wins.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("asyncpg reset query on pool release", ("PoolConnectionHolder.release", "Connection.reset")),
    ("socket writes to RabbitMQ (aiormq writer task)", ("Connection.__writer",)),
    ("handler: SQL (asyncpg, its socket write included)", ("handle_request", "asyncpg/")),
    ("handler: params, method, JSON, metrics", ("handle_request",)),
    ("publish: the reply, or the gateway's request (FastStream, aio-pika, aiormq)", ("_publish",)),
    ("publish: the reply, or the gateway's request (FastStream, aio-pika, aiormq)", ("basic_publish",)),
    ("FastStream consume path (parser, middlewares, fast-depends)", ("faststream/",)),
    ("FastStream consume path (parser, middlewares, fast-depends)", ("fast_depends/",)),
    ("session coalescing and its SQL", ("Coalescer",)),
    ("asyncpg protocol (reading results, pool)", ("asyncpg/",)),
    # Called from aio-pika's delivery callback, so before the AMQP rules.
    ("worker intake: parse and validate (Pipeline.accept)", ("Pipeline.accept",)),
    ("AMQP frames in: aiormq/pamqp decoding, aio-pika message objects", ("aiormq/",)),
    ("AMQP frames in: aiormq/pamqp decoding, aio-pika message objects", ("pamqp/",)),
    ("AMQP frames in: aiormq/pamqp decoding, aio-pika message objects", ("aio_pika/",)),
    ("WebSocket I/O (websockets)", ("websockets/",)),
    ("gateway session, hub and RPC client", ("gateway/session.py",)),
    ("gateway session, hub and RPC client", ("gateway/rpc.py",)),
    ("gateway session, hub and RPC client", ("gateway/hub.py",)),
    ("worker pipeline and routing", ("worker/pipeline.py",)),
    ("worker pipeline and routing", ("worker/routing.py",)),
)
OTHER = "event loop (uvloop: reading sockets, callbacks) and other"


def shares(path: Path) -> tuple[int, dict[str, float]]:
    """(busy samples, share of them by label) of one raw py-spy profile."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        label = next((name for name, markers in RULES if all(m in stack for m in markers)), OTHER)
        counts[label] += int(number)
    total = sum(counts.values())
    return total, {label: count / total for label, count in counts.most_common()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    for profile in parser.parse_args().profiles:
        samples, by_label = shares(profile)
        print(f"\n{profile.name}: {samples} busy samples\n\n| share | where |\n|---:|---|")
        for label, share in by_label.items():
            print(f"| {share:.0%} | {label} |")
