"""Preferences in the event pipeline end to end: a real worker process, RabbitMQ and Postgres.

On ``test_worker``'s fixtures (one worker on a vhost and database of this module's own; fresh user ids
in every test): a type muted in-app stores and pushes nothing, email and push jobs follow the channels
(and an event's own channel list), critical types cannot be muted, quiet hours hold email and push but
never in-app, and a broadcast stores one row per known user whose preferences allow it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from herald_ops.testing.stack import fresh_id
from herald_ops.testing.worker import TOPOLOGY, counters, event, frame_params, recorded_jobs, rows
from shared.preferences import decide_channels, effective_preferences
from tests.integration.test_worker import db, module_stack, watcher, worker
from worker.store.catalog import load_catalog

if TYPE_CHECKING:
    import asyncpg

    from herald_ops.testing.worker import Watcher

__all__ = ["db", "module_stack", "watcher", "worker"]  # fixtures shared with test_worker


async def set_preferences(db: asyncpg.Connection, user: str, **document: Any) -> None:
    """Store ``user``'s overrides the way the preferences requests do (users row first)."""
    await db.execute("INSERT INTO users (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user)
    await db.execute(
        """INSERT INTO user_preferences (user_id, channels, types, quiet_hours)
           VALUES ($1, $2::text::jsonb, $3::text::jsonb, $4::text::jsonb)""",
        user,
        orjson.dumps(document.get("channels", {})).decode(),
        orjson.dumps(document.get("types", {})).decode(),
        orjson.dumps(document["quiet_hours"]).decode() if "quiet_hours" in document else None,
    )


async def test_preferences_mute_a_type_in_app(watcher: Watcher, db: asyncpg.Connection) -> None:
    user = fresh_id("muted")
    await set_preferences(db, user, types={"NEW_COMMENT": {"in_app": False}})
    frames = await watcher.frames(user)

    await watcher.publish(event(user, "NEW_COMMENT"))
    await watcher.publish(event(user, "NEW_REPLY"))  # a marker that is not muted

    (marker,) = await watcher.take(frames, 1)
    assert frame_params(marker)["type"] == "NEW_REPLY"
    assert [r["type"] for r in await rows(db, user)] == ["NEW_REPLY"]
    assert await counters(db, user) == (1, 1)


async def test_email_and_push_follow_channels(watcher: Watcher, db: asyncpg.Connection) -> None:
    plain, no_push, no_in_app = fresh_id("plain"), fresh_id("nopush"), fresh_id("noinapp")
    await set_preferences(db, no_push, channels={"push": False})
    await set_preferences(db, no_in_app, types={"GRADE_RELEASED": {"in_app": False}})
    frames = await watcher.frames(plain, no_push, no_in_app)

    await watcher.publish(event([plain, no_push, no_in_app], "GRADE_RELEASED"))
    narrowed = fresh_id("narrow")
    await watcher.publish(event(narrowed, "GRADE_RELEASED", channels=["push"]))

    users = [plain, no_push, no_in_app, narrowed]
    jobs = await recorded_jobs(db, users, 2 + 1 + 2 + 1)
    got = sorted((job["user_id"], job["channel"]) for job in jobs)
    assert got == sorted(
        [
            (plain, "email"),
            (plain, "push"),
            (no_push, "email"),
            (no_in_app, "email"),
            (no_in_app, "push"),
            (narrowed, "push"),
        ]
    )
    for job in jobs:
        # A copy only without an in-app row (sql/009): otherwise the claim reads that row.
        copy = job["notification"]
        assert (copy is None) == (job["job_key"] is not None)
        assert copy is None or (copy["type"], copy["id"]) == ("GRADE_RELEASED", job["notification_id"])
        assert job["id"] == f"{job['notification_id']}:{job['user_id']}:{job['channel']}"
        assert (job["status"], job["due_at"]) == ("scheduled", job["created_at"])  # due at once
    # Stored in-app: keyed by version; in-app off (nothing stored): by id alone.
    versions = {(job["user_id"], job["version"] is not None, job["job_key"] is not None) for job in jobs}
    assert versions == {
        (plain, True, True),
        (no_push, True, True),
        (no_in_app, False, False),
        (narrowed, False, False),
    }
    assert sorted(m.routing_key or "" for m in await watcher.take(frames, 2)) == sorted([plain, no_push])
    assert await rows(db, no_in_app) == []
    assert await rows(db, narrowed) == []


async def test_critical_types_cannot_be_muted(watcher: Watcher, db: asyncpg.Connection) -> None:
    user = fresh_id("critical")
    off = {"in_app": False, "email": False, "push": False}
    await set_preferences(db, user, channels=off, types={"SECURITY_ALERT": off})
    frames = await watcher.frames(user)

    await watcher.publish(event(user, "SECURITY_ALERT"))
    marker = fresh_id("marker")
    await watcher.publish(event(marker, "GRADE_RELEASED", channels=["email"]))

    assert frame_params((await watcher.take(frames, 1))[0])["type"] == "SECURITY_ALERT"
    await recorded_jobs(db, [marker], 1)  # committed after (or with) the user's event
    jobs = await recorded_jobs(db, [user], 1)
    # In-app and email are locked on; push follows the user's switch.
    assert [(job["user_id"], job["channel"]) for job in jobs] == [(user, "email")]
    assert len(await rows(db, user)) == 1


async def test_quiet_hours_hold_email_and_push_only(watcher: Watcher, db: asyncpg.Connection) -> None:
    user = fresh_id("quiet")
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")
    await set_preferences(db, user, quiet_hours={"start": start, "end": end, "timezone": "UTC"})
    frames = await watcher.frames(user)

    await watcher.publish(event(user, "GRADE_RELEASED"))

    await watcher.take(frames, 1)  # in-app is never held
    jobs = await recorded_jobs(db, [user], 2)
    for job in jobs:
        assert timedelta(minutes=58) < job["due_at"] - now <= timedelta(hours=1, minutes=1)


async def test_broadcast_stores_one_row_per_allowed_known_user(
    watcher: Watcher, db: asyncpg.Connection
) -> None:
    allowed, muted, master_off = fresh_id("b-on"), fresh_id("b-muted"), fresh_id("b-off")
    await db.execute("INSERT INTO users (user_id) VALUES ($1)", allowed)
    await set_preferences(db, muted, types={"SYSTEM_ANNOUNCEMENT": {"in_app": False}})
    await set_preferences(db, master_off, channels={"in_app": False})
    catalog = await load_catalog(db)
    known_before: dict[str, tuple[int, bool]] = {}
    for row in await db.fetch(
        """SELECT u.user_id, u.last_seq, p.channels, p.types, p.quiet_hours
             FROM users u LEFT JOIN user_preferences p USING (user_id)"""
    ):
        overrides = (
            {k: orjson.loads(row[k] or "null") for k in ("channels", "types", "quiet_hours")}
            if row["channels"] is not None
            else None
        )
        prefs = effective_preferences(catalog, overrides)
        wanted = "in_app" in decide_channels(catalog["SYSTEM_ANNOUNCEMENT"], prefs, None)
        known_before[row["user_id"]] = (row["last_seq"], wanted)
    assert not known_before[muted][1]
    assert not known_before[master_off][1]
    live = await watcher.bound_queue(TOPOLOGY.broadcast_exchange)
    body = {"event_id": fresh_id("bc"), "type": "SYSTEM_ANNOUNCEMENT", "title": "Maintenance", "message": "m"}

    await watcher.publish(body, routing_key="notification.broadcast")
    await watcher.publish(body, routing_key="notification.broadcast")  # the same broadcast again

    first, second = await watcher.take(live, 2)
    params = frame_params(first)
    assert params["seq"] is None
    assert (first.headers or {})["x-herald-type"] == "SYSTEM_ANNOUNCEMENT"
    assert (first.headers or {})["x-herald-critical"] is False  # gateways relay critical ones to all
    assert frame_params(second)["id"] == params["id"]
    stored = {
        r["user_id"]: r
        for r in await db.fetch("SELECT * FROM notifications WHERE idempotency_key = $1", body["event_id"])
    }
    assert allowed in stored
    # Every known user whose preferences allow it got exactly one copy, with the shared id and their
    # own next seq; nobody else got one.
    assert set(stored) == {user for user, (_, wanted) in known_before.items() if wanted}
    for user, row in stored.items():
        assert row["id"] == params["id"]
        assert row["seq"] == known_before[user][0] + 1
