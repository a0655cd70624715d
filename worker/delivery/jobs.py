"""Delivery jobs, sans-I/O: the job a worker published, what a send attempt came to, and what follows.

:func:`parse_job` validates a ``herald.deliveries`` message; a sender turns one attempt into an
:class:`Outcome`; :func:`settle` decides the job's next state from it (sent, skipped, retried later with
backoff and jitter, or failed for good) and :func:`retry_delay` how long a retry waits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationError

from shared.events import TYPE_PATTERN, USER_ID_PATTERN, validation_reason
from worker.text import refuse_control_characters
from worker.writes import Job

Status = Literal["sent", "skipped", "retry", "failed"]
#: The longest error text kept in a job's row and dead-letter header.
MAX_ERROR_CHARS: Final = 500
#: The longest ``job_key``, in UTF-8 bytes. The worker's own keys (``<32 hex>:<user id>:<channel>``) take
#: at most 167; the key is indexed, and Postgres refuses an index entry over about 2,700 bytes (54000).
MAX_JOB_KEY_BYTES: Final = 512


class InvalidJob(ValueError):
    """A ``herald.deliveries`` message that is not a job; it is dead-lettered with this reason."""


def _job_key_fits(value: str) -> str:
    if len(value.encode()) > MAX_JOB_KEY_BYTES:
        raise ValueError(f"must be at most {MAX_JOB_KEY_BYTES} bytes in UTF-8")
    return value


class JobNotification(BaseModel):
    """The notification a job is about (the worker's Notification object)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: Both go into email headers (``X-Herald-Notification-Id``, ``X-Herald-Type``, the unsubscribe link)
    #: and the type also names templates, so they are checked when the job arrives: a job of another
    #: service is dead-lettered with the reason instead of carrying a header of its own into the email.
    id: Annotated[str, AfterValidator(refuse_control_characters)]
    type: Annotated[str, StringConstraints(pattern=TYPE_PATTERN)]
    category: str
    title: str
    message: str = ""
    data: dict[str, Any] = {}
    #: The click target (§10), if any; a service worker opens it when the push notification is clicked.
    url: str | None = None
    created_at: datetime


class JobMessage(BaseModel):
    """A ``herald.deliveries`` message body (``worker.schemas.DeliveryJob`` documents it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    notification: JobNotification
    #: An event's recipient (the same pattern): it is indexed, and names the user's profile row.
    user_id: Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
    channel: Literal["email", "push"]
    deliver_after: datetime | None = None
    #: ``<notification id>:<user>:<channel>`` and the notification's seq (amendment 14); absent in the
    #: old format, whose jobs are keyed by their message id only.
    job_key: Annotated[str, AfterValidator(_job_key_fits)] | None = None
    version: int | None = None


def parse_job(body: bytes, message_id: str | None) -> tuple[str, JobMessage]:
    """The job's id (its AMQP message id, else derived like the worker's) and its validated body."""
    try:
        job = JobMessage.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise InvalidJob(f"body: not valid JSON ({exc.msg})") from None
    except ValidationError as exc:
        raise InvalidJob(validation_reason(exc)) from None
    return message_id or f"{job.notification.id}:{job.user_id}:{job.channel}", job


def to_record(job_id: str, job: JobMessage) -> Job:
    """The ``delivery_jobs`` row of a job message. A job without ``job_key`` or ``version`` (the old
    format, or nothing stored in-app) is kept by its id alone."""
    notification = job.notification
    keyed = job.job_key is not None and job.version is not None
    return Job(
        id=job_id,
        notification_id=notification.id,
        user_id=job.user_id,
        channel=job.channel,
        notification=orjson.dumps(notification.model_dump(mode="json")).decode(),
        type=notification.type,
        created_at=notification.created_at,
        deliver_after=job.deliver_after,
        job_key=job.job_key if keyed else None,
        version=job.version if keyed else None,
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one send attempt came to. ``retry``: transient (SMTP 4xx, refused/timed out, push 429/5xx)."""

    status: Status
    error: str | None = None
    #: A retry of a job that some of its targets already accepted (push to several devices: the retry goes
    #: only to the others). Giving up on it leaves it ``sent``: it reached the user.
    partly_sent: bool = False

    @classmethod
    def sent(cls) -> Outcome:
        return cls("sent")

    @classmethod
    def skipped(cls, reason: str) -> Outcome:
        return cls("skipped", storable(reason))

    @classmethod
    def transient(cls, error: str, *, partly_sent: bool = False) -> Outcome:
        return cls("retry", storable(error), partly_sent)

    @classmethod
    def permanent(cls, error: str) -> Outcome:
        return cls("failed", storable(error))


def storable(text: str) -> str:
    """``text`` as a job's ``last_error`` and a dead letter's header can hold it: at most
    :data:`MAX_ERROR_CHARS`, without NUL, and lone surrogates (aiosmtplib decodes an SMTP reply that is
    not UTF-8 with ``surrogateescape``) as ``?``. A reply text comes from a remote server, and Postgres
    refuses both characters, which failed the write of every outcome that shared the statement."""
    return text[:MAX_ERROR_CHARS].replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def settle(outcome: Outcome, attempts: int, max_attempts: int) -> Outcome:
    """The job's next state: a transient failure on the last allowed attempt fails for good, unless some
    target accepted the job already (then it is sent, and the error names what never accepted it)."""
    if outcome.status == "retry" and attempts >= max_attempts:
        given_up = f"gave up after {attempts} attempts: {outcome.error}"
        if outcome.partly_sent:
            return Outcome("sent", storable(given_up))
        return Outcome.permanent(given_up)
    return outcome


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempts + 1``: exponential (``base · 2^(attempts-1)``, at most ``cap``),
    the upper half jittered so retries of many jobs failing together spread out."""
    ceiling = min(cap, base * 2.0 ** max(attempts - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
