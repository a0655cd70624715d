"""Email over SMTP with aiosmtplib: a pool of ``HERALD_SMTP_CONNECTIONS`` connections, each opened on first
use and reused for message after message.

SMTP is one transaction at a time per connection, and each costs four round trips (MAIL, RCPT, DATA, the
message), so one connection sends at most one message per four round trips to the relay; several overlap
them. A send takes an idle connection (waiting for one when all are busy) and hands it back. A dropped or
refused connection is reopened by the next send that takes it.

Classification (docs/protocol.md §9): a 4xx reply, a refused or timed-out connection and a failed login
are transient (the job is retried; an SMTP server that is down holds every job); a 5xx reply to the
message (sender, recipient or data refused) is permanent. So is what would fail the same way at every
attempt, found before anything is sent: an address aiosmtplib would not send to as it is
(:func:`address_problem`), a template the notification does not fit, a header the email package refuses.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.policy
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import jinja2
from aiosmtplib.email import parse_address

from worker.delivery.jobs import Outcome

if TYPE_CHECKING:
    from worker.delivery.render import EmailRenderer
    from worker.delivery.senders.base import Pace
    from worker.store.deliveries import Claimed

# Connection-level failures: the server, the network or our credentials, never this message.
_CONNECTION_ERRORS = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPHeloError,
    aiosmtplib.SMTPAuthenticationError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPNotSupported,
    OSError,
)


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """Where and how to connect, parsed from ``HERALD_SMTP_URL``."""

    hostname: str
    port: int | None
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool

    @classmethod
    def from_url(cls, url: str) -> SmtpTarget:
        """``smtp://[user:pass@]host[:port][?starttls=true]`` or ``smtps://...`` (implicit TLS)."""
        parts = urlsplit(url)
        starttls = parse_qs(parts.query).get("starttls", ["false"])[-1].lower() in ("1", "true", "yes")
        return cls(
            hostname=parts.hostname or "",
            port=parts.port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=parts.scheme == "smtps",
            start_tls=starttls,
        )


def classify_reply(code: int, text: str) -> Outcome:
    """A refusal by the server: 4xx is transient, anything else permanent."""
    error = f"smtp {code}: {text}"
    return Outcome.transient(error) if 400 <= code < 500 else Outcome.permanent(error)


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be sent to as it is, or ``None``. aiosmtplib puts on the ``RCPT TO`` line what
    :func:`~aiosmtplib.email.parse_address` makes of an address, and for some that the profile pattern
    accepts that is another mailbox: ``bob"x@example.com`` becomes ``bob``, ``a(b)c@x.example`` (a
    comment) ``ac@x.example``. Such an email would go to someone else; it is not sent at all."""
    try:
        parsed = parse_address(address)
    except ValueError as exc:  # what aiosmtplib would refuse on the command line
        return f"email address {address!r}: {exc}"
    if parsed != address:
        return f"email address {address!r} would be sent to {parsed!r}, another mailbox"
    return None


class EmailSender:
    """Renders each job with :class:`EmailRenderer` and sends it to the address of the profile the claim
    read with the job."""

    channel = "email"

    def __init__(
        self, target: SmtpTarget, *, timeout: float, renderer: EmailRenderer, connections: int = 1
    ) -> None:
        self._target = target
        self._timeout = timeout
        self._renderer = renderer
        self._connections = connections
        # Idle connections; None is a slot whose connection is not open (yet, or since it dropped).
        self._idle: asyncio.Queue[aiosmtplib.SMTP | None] = asyncio.Queue()
        for _ in range(connections):
            self._idle.put_nowait(None)

    async def _connect(self) -> aiosmtplib.SMTP:
        target = self._target
        smtp = aiosmtplib.SMTP(
            hostname=target.hostname,
            port=target.port,
            username=target.username,
            password=target.password,
            use_tls=target.use_tls,
            start_tls=target.start_tls,
            timeout=self._timeout,
        )
        await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:  # know the server's extensions (SMTPUTF8) before the first send
            await smtp.ehlo()
        return smtp

    async def send(self, job: Claimed, pace: Pace) -> Outcome:
        """Send one email (one slot of the rate cap); a user without an address is skipped."""
        profile = job.profile
        if not profile["email"]:
            return Outcome.skipped("no email address")
        address: str = profile["email"]
        if (problem := address_problem(address)) is not None:
            return Outcome.permanent(problem)
        # Rendered and flattened before taking a connection: a connection waits only on its server, and
        # the next message is built while the current one is in flight. The parts are base64 and the
        # headers encoded words, so the bytes are 7-bit clean, except for a non-ASCII address: it goes
        # with SMTPUTF8 (RFC 6531), and its To header as UTF-8, since an address cannot be encoded.
        # What a message cannot be built from fails the same way at every attempt: the job fails now with
        # the reason, instead of being retried as a sender error (a traceback each time) until it gives up.
        utf8 = not address.isascii()
        try:
            message = self._renderer.message(job.id, job.version, job.notification, profile, job.user_id)
            data = message.as_bytes(policy=email.policy.SMTPUTF8) if utf8 else message.as_bytes()
        except jinja2.TemplateError as exc:  # an undefined variable (StrictUndefined), a syntax error
            return Outcome.permanent(f"template: {type(exc).__name__}: {exc}")
        except (email.errors.MessageError, ValueError) as exc:  # a header value the email package refuses
            return Outcome.permanent(f"email: {type(exc).__name__}: {exc}")
        options = ["SMTPUTF8"] if utf8 else []
        await pace(1)
        smtp = await self._idle.get()
        try:
            if smtp is None or not smtp.is_connected:
                smtp = await self._connect()
            if options and not smtp.supports_extension("smtputf8"):
                return Outcome.permanent("smtp: a non-ASCII address needs SMTPUTF8, which the server lacks")
            await smtp.sendmail(self._renderer.envelope_sender, [address], data, mail_options=options)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return classify_reply(refused.code, refused.message)
        except _CONNECTION_ERRORS as exc:
            _close(smtp)
            smtp = None  # the slot opens a new connection next time
            return Outcome.transient(f"smtp connection: {exc!r}")
        except aiosmtplib.SMTPResponseException as exc:
            return classify_reply(exc.code, exc.message)
        except aiosmtplib.SMTPException as exc:
            _close(smtp)
            smtp = None
            return Outcome.transient(f"smtp: {exc!r}")
        finally:
            self._idle.put_nowait(smtp)
        return Outcome.sent()

    async def close(self) -> None:
        """Wait for the sends in flight, then say QUIT on every open connection."""
        for _ in range(self._connections):
            smtp = await self._idle.get()
            if smtp is not None and smtp.is_connected:
                try:
                    await smtp.quit()
                except aiosmtplib.SMTPException:
                    smtp.close()


def _close(smtp: aiosmtplib.SMTP | None) -> None:
    """Drop a connection that failed (without QUIT: it may not answer)."""
    if smtp is not None:
        smtp.close()
