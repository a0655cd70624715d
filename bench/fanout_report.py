"""The table ``bench/gateway_fanout.py`` prints: each measure of the gateway beside the bare relay (and
their ratio) and the bare websockets server, the one-minute load average beside each figure, then the
targets met or missed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


MEASURES = [
    ("per-user drain, frames/s (a queued backlog)", "drain", "{:,.0f}", "{:.2f}×"),
    ("per-user drain: server CPU µs per frame", "drain cpu", "{:.1f}", "{:.2f}×"),
    ("per-user live, frames/s (published meanwhile)", "user", "{:,.0f}", "{:.2f}×"),
    ("per-user live: server CPU µs per frame", "user cpu", "{:.1f}", "{:.2f}×"),
    ("broadcast, frames/s (written to sockets)", "broadcast", "{:,.0f}", "{:.2f}×"),
    ("broadcast: server CPU µs per frame", "broadcast cpu", "{:.2f}", "{:.2f}×"),
    ("RSS per idle connection, KiB (1st wave)", "KiB/conn", "{:.1f}", "{:.2f}×"),
    ("RSS per idle connection, KiB (2nd wave)", "KiB/conn (2nd wave)", "{:.1f}", "{:.2f}×"),
]

#: (label, measure, the floor it is compared with, factor, whether the gateway must be at least or at most
#: factor × the floor)
TARGETS = [
    ("per-user drain ≥ 1.2× the bare relay", "drain", "relay", 1.2, True),
    ("RSS per idle connection (1st wave) ≤ 1.1× the bare relay's", "KiB/conn", "relay", 1.1, False),
    ("broadcast ≥ 50% of bare websockets", "broadcast", "bare", 0.5, True),
]


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report(args: argparse.Namespace, r: dict[str, float]) -> str:
    def cell(server: str, key: str, number: str) -> str:
        if f"{server} {key}" not in r:
            return "—"
        load = r.get(f"{server} {key} load")
        return number.format(r[f"{server} {key}"]) + ("" if load is None else f" (load {load:.1f})")

    rows = [
        f"Gateway fan-out ({args.clients} clients, {args.payload}-byte frames, {args.user_frames} per-user "
        f"frames, {args.broadcasts} broadcasts; idle memory at {args.idle} connections). In brackets: the "
        "one-minute load average at the end of the measurement.",
        "",
        "| measure | herald gateway | bare relay (websockets + aio-pika) | gateway / bare relay "
        "| bare websockets (no broker) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key, number, ratio in MEASURES:
        if f"gateway {key}" in r:
            share = ratio.format(r[f"gateway {key}"] / r[f"relay {key}"]) if f"relay {key}" in r else "—"
            cells = [
                cell("gateway", key, number),
                cell("relay", key, number),
                share,
                cell("bare", key, number),
            ]
            rows.append(f"| {label} | {' | '.join(cells)} |")
    rows.append("")
    for label, key, floor, factor, at_least in TARGETS:
        if f"gateway {key}" in r and f"{floor} {key}" in r:
            ours, theirs = r[f"gateway {key}"], factor * r[f"{floor} {key}"]
            rows.append(f"Target {label}: {verdict(ours >= theirs if at_least else ours <= theirs)}.")
    if "gateway KiB/conn" in r:
        rows.append(
            f"Target ≤ 20 KiB per idle connection (1st wave): {verdict(r['gateway KiB/conn'] <= 20)}."
        )
    return "\n".join(rows)
