"""``herald-delivery`` without I/O: jobs and retries, templates and headers, push payloads, settings."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from herald_ops import cli
from herald_ops.testing.delivery import BrowserKeys
from worker.delivery.app import rate_limiter
from worker.delivery.jobs import (
    MAX_ERROR_CHARS,
    InvalidJob,
    Outcome,
    parse_job,
    retry_delay,
    settle,
    to_record,
)
from worker.delivery.render import EmailRenderer, template_names
from worker.delivery.senders.email import SmtpTarget, classify_reply
from worker.delivery.senders.webpush import MAX_PAYLOAD_BYTES, encrypt, push_payload
from worker.delivery.settings import DeliverySettings
from worker.vapid import load_vapid, public_key

if TYPE_CHECKING:
    from pathlib import Path

NOTIFICATION: dict[str, Any] = {
    "id": "n1",
    "type": "GRADE_RELEASED",
    "category": "assessment",
    "title": "<b>Grade</b>",
    "message": "Well done",
    "data": {"url": "https://app.example/g"},
    "created_at": "2026-01-01T00:00:00Z",
}


def renderer(templates_dir: Path | None = None) -> EmailRenderer:
    return EmailRenderer(
        templates_dir=templates_dir,
        app_name="Acme Learn",
        sender="Acme <noreply@acme.example>",
        unsubscribe_url="https://acme.example/u/{user_id}/{type}",
    )


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempts, ceiling in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)):
        delays = [retry_delay(attempts, 2.0, 60.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered, not one value


def test_a_transient_failure_on_the_last_attempt_fails_for_good() -> None:
    assert settle(Outcome.transient("smtp 451"), 3, 8).status == "retry"
    final = settle(Outcome.transient("smtp 451"), 8, 8)
    assert final.status == "failed"
    assert final.error == "gave up after 8 attempts: smtp 451"
    assert settle(Outcome.permanent("smtp 550"), 1, 8).status == "failed"


def test_giving_up_on_a_device_leaves_a_job_that_reached_another_sent() -> None:
    partly = Outcome.transient("push 503", partly_sent=True)
    assert settle(partly, 3, 8) == partly
    assert settle(partly, 8, 8) == Outcome("sent", "gave up after 8 attempts: push 503")


def test_smtp_replies_4xx_are_transient_and_5xx_permanent() -> None:
    assert classify_reply(451, "later") == Outcome("retry", "smtp 451: later")
    assert classify_reply(550, "no such user") == Outcome("failed", "smtp 550: no such user")


def test_jobs_are_validated_and_keep_their_message_id() -> None:
    body = orjson.dumps({"notification": NOTIFICATION, "user_id": "u1", "channel": "email"})
    job_id, job = parse_job(body, "n1:u1:email")
    assert job_id == "n1:u1:email"
    assert job.notification.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_job(body, None)[0] == "n1:u1:email"
    with pytest.raises(InvalidJob, match="channel"):
        parse_job(orjson.dumps({"notification": NOTIFICATION, "user_id": "u1", "channel": "sms"}), None)
    with pytest.raises(InvalidJob, match="JSON"):
        parse_job(b"{", None)


def test_a_keyed_job_is_recorded_with_its_version_and_an_old_format_one_without() -> None:
    keyed = {"notification": NOTIFICATION, "user_id": "u1", "channel": "email", "job_key": "n1:u1:email"}
    row = to_record(*parse_job(orjson.dumps({**keyed, "version": 7}), "n1:u1:email:7"))
    assert (row.id, row.job_key, row.version) == ("n1:u1:email:7", "n1:u1:email", 7)
    assert (row.notification_id, row.type, row.created_at) == (
        "n1",
        NOTIFICATION["type"],
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert orjson.loads(row.notification)["id"] == "n1"
    unstored = to_record(*parse_job(orjson.dumps({**keyed, "version": None}), "n1:u1:email"))
    assert (unstored.job_key, unstored.version) == (None, None)
    old = to_record(
        *parse_job(orjson.dumps({"notification": NOTIFICATION, "user_id": "u1", "channel": "email"}), None)
    )
    assert (old.id, old.job_key, old.version) == ("n1:u1:email", None, None)


def test_template_fallback_chain_tries_locale_then_language_then_type_then_default() -> None:
    assert template_names("GRADE_RELEASED", "pt-BR", "html") == [
        "GRADE_RELEASED.pt-BR.html",
        "GRADE_RELEASED.pt.html",
        "GRADE_RELEASED.html",
        "default.pt-BR.html",
        "default.pt.html",
        "default.html",
    ]
    assert template_names("X", None, "txt") == ["X.txt", "default.txt"]


def test_every_catalog_type_has_text_and_html_defaults_with_title_message_and_button() -> None:
    types = [
        "COURSE_NEW_CONTENT", "COURSE_UPDATE", "COURSE_SCHEDULE_CHANGE", "ASSIGNMENT_DEADLINE",
        "QUIZ_AVAILABLE", "GRADE_RELEASED", "MILESTONE_ACHIEVED", "CERTIFICATE_ISSUED", "COURSE_COMPLETED",
        "NEW_COMMENT", "NEW_REPLY", "INSTRUCTOR_MESSAGE", "SYSTEM_ANNOUNCEMENT", "SECURITY_ALERT",
    ]  # fmt: skip
    for name in types:
        rendered = renderer().render({**NOTIFICATION, "type": name}, {"locale": None}, None)
        assert rendered.subject == "<b>Grade</b>"
        assert "&lt;b&gt;Grade&lt;/b&gt;" in rendered.html
        assert "<b>Grade</b>" not in rendered.html
        assert 'href="https://app.example/g"' in rendered.html
        assert "Acme Learn" in rendered.html
        assert "Well done" in rendered.text
        assert "https://app.example/g" in rendered.text


def test_a_notification_without_a_link_gets_no_button() -> None:
    rendered = renderer().render({**NOTIFICATION, "data": {"url": "javascript:alert(1)"}}, {}, None)
    assert "<a href" not in rendered.html.split("Unsubscribe")[0].replace("unsubscribe", "")
    assert "javascript:" not in rendered.html


def test_the_button_links_the_notifications_url_before_data_url() -> None:
    # PROTOCOL §10: ``url`` is the click target; ``data.url`` is the fallback, as for a push.
    own = renderer().render({**NOTIFICATION, "url": "https://lms.example/c/42"}, {}, None)
    assert 'href="https://lms.example/c/42"' in own.html
    assert "https://lms.example/c/42" in own.text
    assert "https://app.example/g" not in own.html
    only_url = renderer().render({**NOTIFICATION, "url": "https://lms.example/c/7", "data": {}}, {}, None)
    assert 'href="https://lms.example/c/7"' in only_url.html


def test_an_operator_template_overrides_by_locale(tmp_path: Path) -> None:
    (tmp_path / "GRADE_RELEASED.de.subject.txt").write_text("Note: {{ title }}")
    (tmp_path / "GRADE_RELEASED.de.txt").write_text("Hallo {{ user.name }}: {{ message }}")
    rendered = renderer(tmp_path).render(NOTIFICATION, {"locale": "de-AT", "name": "Ada"}, None)
    assert rendered.subject == "Note: <b>Grade</b>"
    assert rendered.text == "Hallo Ada: Well done"
    assert "Your grade is out" in rendered.html  # the shipped HTML is still used


def test_message_headers_and_a_message_id_stable_per_job_version() -> None:
    profile = {"email": "ada@example.com", "locale": "en"}
    first = renderer().message("job-1", 1, NOTIFICATION, profile, "u1")
    again = renderer().message("job-1", 1, NOTIFICATION, profile, "u1")
    other = renderer().message("job-2", 1, NOTIFICATION, profile, "u1")
    assert first["Message-ID"] == again["Message-ID"] != other["Message-ID"]
    assert first["Message-ID"].endswith("@acme.example>")
    # A job without a key (no version) keeps the id of version 1; a collapsed notification's later
    # version, sent from the same row (amendment 25), is another message.
    assert renderer().message("job-1", None, NOTIFICATION, profile, "u1")["Message-ID"] == first["Message-ID"]
    second = renderer().message("job-1", 2, NOTIFICATION, profile, "u1")
    assert second["Message-ID"] == renderer().message("job-1", 2, NOTIFICATION, profile, "u1")["Message-ID"]
    assert second["Message-ID"] != first["Message-ID"]
    assert parsedate_to_datetime(first["Date"]).tzinfo is not None  # RFC 5322's origination date
    assert first["To"] == "ada@example.com"
    assert first["X-Herald-Notification-Id"] == "n1"
    assert first["X-Herald-Type"] == "GRADE_RELEASED"
    assert first["List-Unsubscribe"] == "<https://acme.example/u/u1/GRADE_RELEASED>"
    assert first.get_content_type() == "multipart/alternative"


def test_push_payloads_are_shortened_to_fit() -> None:
    long = {**NOTIFICATION, "message": "é" * 5000}
    payload = orjson.loads(push_payload(long))
    assert len(push_payload(long)) <= MAX_PAYLOAD_BYTES
    assert payload["message"].endswith("…")
    assert payload["title"] == NOTIFICATION["title"]
    huge_data = {**NOTIFICATION, "data": {"blob": "x" * 5000}}
    assert orjson.loads(push_payload(huge_data))["data"] == {}
    assert orjson.loads(push_payload(NOTIFICATION)) == {**NOTIFICATION, "url": None}  # none given


def test_push_bodies_decrypt_with_the_subscription_keys() -> None:
    browser = BrowserKeys()
    keys = browser.subscription("https://push.example/x")["keys"]
    body = encrypt(b'{"title": "hi"}', keys["p256dh"], keys["auth"])
    assert browser.decrypt(body) == b'{"title": "hi"}'


def test_smtp_urls_parse_and_bad_ones_are_refused() -> None:
    target = SmtpTarget.from_url("smtp://ada%40x:p%3Ass@mail.example:2525?starttls=true")
    assert (target.hostname, target.port, target.username, target.password) == (
        "mail.example", 2525, "ada@x", "p:ss",
    )  # fmt: skip
    assert (target.use_tls, target.start_tls) == (False, True)
    assert SmtpTarget.from_url("smtps://mail.example").use_tls
    with pytest.raises(ValueError, match="smtp_url"):
        DeliverySettings(smtp_url="http://mail.example")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsubscribe_url"):
        DeliverySettings(unsubscribe_url="https://x/{email}")


def test_herald_vapid_prints_a_usable_key_pair(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["vapid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pem = "\n".join(line for line in lines if not line.startswith("#"))
    pem = pem[: pem.index("-----END PRIVATE KEY-----") + len("-----END PRIVATE KEY-----")] + "\n"
    assert public_key(load_vapid(pem)) == lines[-1]


def test_non_ascii_subjects_and_sender_names_are_encoded() -> None:
    import email
    import email.policy

    sender = EmailRenderer(
        templates_dir=None, app_name="A", sender="Hérald <h@x.example>", unsubscribe_url=None
    )
    raw = sender.message(
        "j", 1, {**NOTIFICATION, "title": "Größe 💡"}, {"email": "a@b.example"}, "u"
    ).as_bytes()
    assert raw.isascii()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Größe 💡"
    assert parsed["From"] == "Hérald <h@x.example>"


def test_error_texts_are_stored_without_nul_or_lone_surrogates() -> None:
    """aiosmtplib decodes a reply that is not UTF-8 with surrogateescape; Postgres takes neither that nor
    NUL, and one refused outcome failed the statement of every outcome written with it."""
    reply = b"550 5.1.1 M\xfcller\x00 unknown".decode("utf-8", "surrogateescape")
    for outcome in (Outcome.permanent(reply), Outcome.transient(reply), Outcome.skipped(reply)):
        assert outcome.error == "550 5.1.1 M?ller unknown"
    assert Outcome.permanent("x" * 2 * MAX_ERROR_CHARS).error == "x" * MAX_ERROR_CHARS


@pytest.mark.parametrize("rate", [0.5, 1.0, 50.0])
async def test_a_rate_cap_below_one_a_second_still_lets_sends_through(rate: float) -> None:
    limiter = rate_limiter(rate)
    async with asyncio.timeout(5):
        async with limiter:  # aiolimiter refuses every acquire when its capacity is below one
            pass
    assert limiter.max_rate / limiter.time_period == pytest.approx(rate)
