"""Chaos under a stream of events with clients connected: a RabbitMQ restart, a Postgres restart and a
gateway SIGKILL each lose and duplicate nothing, and every client ends with every notification of its
user, live or by sync, without any process being restarted by hand. Sizes are kept small here (the
fault suite stays within minutes); ``bench/chaos.py`` runs the bigger versions and prints the figures.

These stop the machine's RabbitMQ and Postgres, so they run last, serially, with the rest of tests/fault."""

from __future__ import annotations

from typing import TYPE_CHECKING

from herald_ops.testing.chaos import kill_gateway, restart_postgres, restart_rabbitmq, run_scenario

if TYPE_CHECKING:
    from herald_ops.testing.chaos import Figures
    from herald_ops.testing.stack import Stack


def assert_nothing_lost(figures: Figures) -> None:
    print(figures.line())
    assert figures.sent > 0
    assert figures.stored == figures.sent
    assert figures.lost == 0
    assert figures.duplicated == 0
    assert figures.delivered_live + figures.delivered_by_sync == figures.stored


async def test_rabbitmq_restart_mid_stream(fresh_stack: Stack) -> None:
    figures = await run_scenario(
        fresh_stack, "rabbitmq restart", restart_rabbitmq(outage=3.0), clients=40, events=400, rate=80
    )
    assert_nothing_lost(figures)


async def test_postgres_restart_mid_stream(fresh_stack: Stack) -> None:
    figures = await run_scenario(
        fresh_stack, "postgres restart", restart_postgres(), clients=40, events=400, rate=80
    )
    assert_nothing_lost(figures)


async def test_gateway_sigkill_clients_move_to_the_other_gateway_gap_free(fresh_stack: Stack) -> None:
    figures = await run_scenario(
        fresh_stack, "gateway SIGKILL", kill_gateway(), clients=100, events=400, rate=80
    )
    assert_nothing_lost(figures)
    assert figures.recovery["clients_reconnected"] > 0
