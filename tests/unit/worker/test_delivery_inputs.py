"""What ``herald-delivery`` refuses for good, with the reason, before it sends anything: job fields that
would become email headers of their own, addresses aiosmtplib would send to another mailbox, templates and
headers a message cannot be built from (no I/O: each fails before a connection is opened)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.unit.worker.test_delivery import NOTIFICATION as RENDERED
from worker.delivery.jobs import InvalidJob, Outcome, parse_job
from worker.delivery.render import EmailRenderer
from worker.delivery.senders.email import EmailSender, SmtpTarget, address_problem
from worker.store.deliveries import Claimed

if TYPE_CHECKING:
    from pathlib import Path

# The rendering tests' notification, its title plain: these tests look at headers, not markup.
NOTIFICATION: dict[str, Any] = RENDERED | {"title": "Grade"}
INJECTED = "\nReply-To : attacker@evil.example"  # the space before the colon got past the email package


def job_body(**notification: str) -> bytes:
    return orjson.dumps(
        {"notification": {**NOTIFICATION, **notification}, "user_id": "u1", "channel": "email"}
    )


@pytest.mark.parametrize("separator", ["\n", "\r", "\x0b", "\x1c", "\x85", "\u2028", "\u2029", "\x00"])
def test_a_notification_id_with_a_control_character_or_line_break_is_not_a_job(separator: str) -> None:
    with pytest.raises(InvalidJob, match=r"^notification\.id: .*control characters or line breaks"):
        parse_job(job_body(id=f"n1{separator}Reply-To : attacker@evil.example"), None)


@pytest.mark.parametrize(
    "notification_type", [f"GRADE_RELEASED{INJECTED}", "grade_released", "GRADE RELEASED"]
)
def test_a_notification_type_outside_the_catalog_pattern_is_not_a_job(notification_type: str) -> None:
    with pytest.raises(InvalidJob, match=r"^notification\.type: String should match pattern"):
        parse_job(job_body(type=notification_type), None)


def sender(templates_dir: Path | None = None) -> EmailSender:
    """A sender whose server is never reached: every job here fails before a connection is taken."""
    renderer = EmailRenderer(
        templates_dir=templates_dir,
        app_name="Acme",
        sender="Acme <noreply@acme.example>",
        unsubscribe_url="https://acme.example/u/{user_id}/{type}",
    )
    return EmailSender(SmtpTarget.from_url("smtp://127.0.0.1:9"), timeout=1, renderer=renderer)


async def refused_before_sending(
    *, email: str = "ok@example.com", user_id: str = "u1", templates_dir: Path | None = None, **fields: str
) -> Outcome:
    """The outcome of sending a claimed job (``fields`` replace its notification's) that must not take a
    slot of the rate cap: nothing is sent."""

    async def pace(requests: int) -> None:
        raise AssertionError(f"a job refused before sending took {requests} slot(s) of the rate cap")

    profile = {"email": email, "name": None, "locale": None, "timezone": None}
    job = Claimed("j1", user_id, "email", {**NOTIFICATION, **fields}, 1, False, None, profile, 1)
    return await sender(templates_dir).send(job, pace)


@pytest.mark.parametrize(
    ("address", "sent_to"),
    [
        ('bob"x@example.com', "bob"),
        ("a(b)c@x.example", "ac@x.example"),
        ("(x)ok@example.com", "ok@example.com"),
    ],
)
async def test_an_address_aiosmtplib_would_rewrite_fails_the_job_instead_of_reaching_another_mailbox(
    address: str, sent_to: str
) -> None:
    outcome = await refused_before_sending(email=address)
    assert outcome == Outcome.permanent(
        f"email address {address!r} would be sent to {sent_to!r}, another mailbox"
    )


@pytest.mark.parametrize("address", ["ok@example.com", "ü@exämple.test", "a.b+c@x.example", "a\\b@x.example"])
def test_an_address_aiosmtplib_sends_as_it_is_passes(address: str) -> None:
    assert address_problem(address) is None


async def test_a_template_the_notification_does_not_fit_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "GRADE_RELEASED.subject.txt").write_text("{{ titel }}")  # a typo: StrictUndefined
    (tmp_path / "NEW_COMMENT.subject.txt").write_text("{{ title }")  # a syntax error
    typo = await refused_before_sending(templates_dir=tmp_path)
    assert typo == Outcome.permanent("template: UndefinedError: 'titel' is undefined")
    syntax = await refused_before_sending(templates_dir=tmp_path, type="NEW_COMMENT")
    assert syntax.status == "failed"
    assert (syntax.error or "").startswith("template: TemplateSyntaxError: unexpected '}'")


@pytest.mark.parametrize(
    ("fields", "value"),
    [
        # Rows recorded before jobs were checked on arrival: one the email package refuses itself, one it
        # let through as a header of its own.
        ({"id": "n1\nX-Evil: 1"}, "n1\nX-Evil: 1"),
        ({"id": f"n1{INJECTED}"}, f"n1{INJECTED}"),
        # The user id goes into the unsubscribe link; a job is not refused for it on arrival.
        ({"user_id": f"u1{INJECTED}"}, f"https://acme.example/u/u1{INJECTED}/GRADE_RELEASED"),
    ],
)
async def test_a_header_value_with_a_line_break_fails_the_job_with_the_reason(
    fields: dict[str, Any], value: str
) -> None:
    outcome = await refused_before_sending(**fields)
    assert outcome == Outcome.permanent(
        f"email: ValueError: header value {value!r} must not contain control characters or line breaks"
    )
