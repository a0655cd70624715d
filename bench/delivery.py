"""Delivery throughput: emails/s to a local SMTP server and pushes/s to a local push receiver through a real
``herald-delivery``, side by side with a bare aiosmtplib loop and a bare HTTP POST loop in the same run.

Starts its own vhost + database and one ``herald-delivery`` (rate caps lifted), records ``--jobs`` email
jobs and as many push jobs in ``delivery_jobs`` the way the worker does (one statement per 200 jobs, which
wakes ``herald-delivery`` with ``NOTIFY``), and times until the servers received them all. The bare loops
send the same number of messages to the same servers: the same rendered emails over one aiosmtplib
connection, one after another (``herald-delivery`` uses ``--smtp-connections``, default
``HERALD_SMTP_CONNECTIONS``'s 1: like for like), and httpx POSTs with the push channel's
concurrency (no encryption, no database).

Each channel runs twice per round, in alternating order: jobs carrying their notification's copy (its
in-app copy is off) and jobs of notifications stored in-app, which carry none (``notification`` NULL,
keyed, versioned: the claim reads the in-app row). The in-app rows are inserted before the timing
starts. With ``--markdown`` the table is printed as Markdown for docs/performance.md.

    .venv/bin/python -m bench.delivery [--jobs 1000] [--rounds 3] [--smtp-connections 4] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiosmtplib
import asyncpg
import httpx
import orjson

from herald_ops.testing.delivery import BrowserKeys, running_mailbox, running_receiver
from herald_ops.testing.stack import fresh_id, stack_context
from worker.delivery.render import EmailRenderer
from worker.delivery.settings import DeliverySettings
from worker.routing import job_key
from worker.store.deliveries import record
from worker.vapid import new_key_pair
from worker.writes import Job

if TYPE_CHECKING:
    from collections.abc import Callable

    from herald_ops.testing.delivery import Mailbox, PushReceiver
    from herald_ops.testing.stack import Stack

PUSH_CONCURRENCY = 50
SENDER = "Herald <bench@herald.test>"


def notification(index: int) -> dict[str, object]:
    return {
        "id": f"{fresh_id('n')}{index}",
        "seq": None,
        "type": "INSTRUCTOR_MESSAGE",
        "category": "social",
        "title": f"Message {index}",
        "message": "Please read chapter 3 before Thursday's session.",
        "data": {"url": "https://app.example/courses/1"},
        "created_at": datetime.now(UTC).isoformat(),
        "read_at": None,
    }


def job(user: str, channel: str, params: dict[str, object]) -> Job:
    """A job as the worker records it: with a copy when ``params`` has no seq (its in-app copy is off, no
    key, no version), else keyed and versioned by that seq, without a copy."""
    key = job_key(str(params["id"]), user, channel)
    seq = params["seq"]
    version = seq if isinstance(seq, int) else None
    return Job(
        id=key,
        notification_id=str(params["id"]),
        user_id=user,
        channel=channel,
        notification=orjson.dumps(params).decode() if version is None else None,
        type="INSTRUCTOR_MESSAGE",
        created_at=datetime.now(UTC),
        deliver_after=None,
        job_key=None if version is None else key,
        version=version,
    )


async def stored_in_app(database_url: str, user: str, count: int) -> list[dict[str, object]]:
    """``count`` notifications stored in the (new) ``user``'s inbox, seqs from 1; returns their params."""
    batch = [notification(index) | {"seq": index + 1} for index in range(count)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO users (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user)
        await conn.copy_records_to_table(
            "notifications",
            columns=["user_id", "seq", "id", "type", "category", "title", "message", "data"],
            records=[
                (user, p["seq"], p["id"], p["type"], p["category"], p["title"], p["message"],
                 orjson.dumps(p["data"]).decode())
                for p in batch
            ],
        )  # fmt: skip
    finally:
        await conn.close()
    return batch


async def record_jobs(database_url: str, channel: str, user: str, batch: list[dict[str, object]]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for start in range(0, len(batch), 200):
            await record(conn, [job(user, channel, params) for params in batch[start : start + 200]])
    finally:
        await conn.close()


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not finish in time")
        await asyncio.sleep(0.01)


async def bare_smtp(mailbox: Mailbox, address: str, count: int) -> float:
    """The same messages herald-delivery renders (rendered beforehand, untimed), over one connection."""
    renderer = EmailRenderer(templates_dir=None, app_name="Herald", sender=SENDER, unsubscribe_url=None)
    messages = []
    for index in range(count):
        params = notification(index)
        messages.append(renderer.message(f"{params['id']}:bare:email", 1, params, {"email": address}, "bare"))
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=mailbox.port, start_tls=False)
    await smtp.connect()
    started = time.perf_counter()
    for message in messages:
        await smtp.send_message(message)
    elapsed = time.perf_counter() - started
    await smtp.quit()
    return count / elapsed


async def bare_posts(receiver: PushReceiver, count: int) -> float:
    body = b"x" * 300  # about the size of an encrypted notification
    gate = asyncio.Semaphore(PUSH_CONCURRENCY)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=PUSH_CONCURRENCY)) as client:

        async def post() -> None:
            async with gate:
                await client.post(receiver.endpoint("bare"), content=body, headers={"TTL": "60"})

        started = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(count)))
        return count / (time.perf_counter() - started)


def emailed(mailbox: Mailbox, address: str, total: int) -> bool:
    return mailbox.count(address) >= total


def pushed(receiver: PushReceiver, name: str, total: int) -> bool:
    return len(receiver.to(name)) >= total


async def known_user(stack: Stack, receiver: PushReceiver) -> tuple[str, str]:
    """A user with an email address and one push subscription at ``receiver``; returns (user, address)."""
    user = fresh_id()
    address = f"{user}@bench.test"
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute("INSERT INTO user_profiles (user_id, email) VALUES ($1, $2)", user, address)
        keys = BrowserKeys().subscription(receiver.endpoint(user))["keys"]
        await conn.execute(
            "INSERT INTO push_subscriptions (id, user_id, endpoint, p256dh, auth)"
            " VALUES ($1, $2, $3, $4, $5)",
            fresh_id("s"), user, receiver.endpoint(user), keys["p256dh"], keys["auth"],
        )  # fmt: skip
    finally:
        await conn.close()
    return user, address


Round = list[tuple[str, float, float]]


async def run(stack: Stack, jobs: int, smtp_connections: int, rounds: int) -> list[Round]:
    """``rounds`` rounds against one ``herald-delivery``: each a new user, its emails and pushes, then the
    bare loops' as many, back to back."""
    private_pem, _ = new_key_pair()
    measured: list[Round] = []
    with running_mailbox() as mailbox, running_receiver() as receiver:
        stack.start_delivery(
            smtp_url=mailbox.url,
            email_from=SENDER,
            smtp_rate=1_000_000,
            smtp_connections=smtp_connections,
            push_rate=1_000_000,
            push_concurrency=PUSH_CONCURRENCY,
            vapid_private_key=private_pem,
            push_allow_http="true",
            push_hosts="127.0.0.1",  # the loopback receiver
            log_level="WARNING",
        )
        for number in range(rounds):
            user, address = await known_user(stack, receiver)
            copies = [notification(index) for index in range(jobs)]
            in_app = await stored_in_app(stack.database_url, user, jobs)
            rates: dict[tuple[str, str], float] = {}
            for channel, done in (
                ("email", functools.partial(emailed, mailbox, address)),
                ("push", functools.partial(pushed, receiver, user)),
            ):
                variants = [("copy", copies), ("in-app row", in_app)]
                # Alternating which goes first, so that neither always finds the process warmed up.
                order = variants[:: 1 if number % 2 == 0 else -1]
                for done_before, (variant, batch) in enumerate(order):
                    # The user's mailbox and push endpoint count both variants' messages.
                    total = jobs * (done_before + 1)
                    started = time.perf_counter()
                    await record_jobs(stack.database_url, channel, user, batch)
                    await until(functools.partial(done, total), 600)
                    rates[channel, variant] = jobs / (time.perf_counter() - started)
            bare_email = await bare_smtp(mailbox, f"bare-{address}", jobs)
            bare_push = await bare_posts(receiver, jobs)
            measured.append(
                [
                    (f"{unit} ({variant})", rates[channel, variant], bare)
                    for channel, unit, bare in (
                        ("email", "emails/s", bare_email),
                        ("push", "pushes/s", bare_push),
                    )
                    for variant in ("copy", "in-app row")
                ]
            )
            print(f"round {number + 1}: load average {os.getloadavg()[0]:.1f}", flush=True)
            report(measured[-1], markdown=False)
    return measured


def report(rows: Round, *, markdown: bool) -> None:
    for name, herald, bare in rows:
        print(f"{name:22} herald-delivery {herald:8.0f}   bare loop {bare:8.0f}   ratio {herald / bare:5.0%}")
    if markdown:
        print("\n| measure | herald-delivery | bare loop | ratio |\n|---|---|---|---|")
        for name, herald, bare in rows:
            print(f"| {name} | {herald:,.0f} | {bare:,.0f} | {herald / bare:.0%} |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--smtp-connections", type=int, default=DeliverySettings.model_fields["smtp_connections"].default
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians reported)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    with stack_context("herald_bench") as stack:
        rounds = asyncio.run(run(stack, args.jobs, args.smtp_connections, args.rounds))
        print(
            f"herald-delivery with {args.smtp_connections} SMTP connection(s), {args.jobs} jobs per channel, "
            f"medians of {len(rounds)} rounds (the ratio: the median of the rounds' ratios)"
        )
        # Before the teardown, which a loaded broker may make slow.
        for index, (name, _, _) in enumerate(rounds[0]):
            herald = statistics.median(r[index][1] for r in rounds)
            bare = statistics.median(r[index][2] for r in rounds)
            ratio = statistics.median(r[index][1] / r[index][2] for r in rounds)
            print(f"{name:22} herald-delivery {herald:8.0f}   bare loop {bare:8.0f}   ratio {ratio:5.0%}")
        print("load average (1, 5, 15 min): " + ", ".join(f"{load:.1f}" for load in os.getloadavg()))
        if args.markdown:
            for number, rows in enumerate(rounds, 1):
                print(f"\nround {number}")
                report(rows, markdown=True)


if __name__ == "__main__":
    main()
