"""Email over SMTP with aiosmtplib: one connection, opened on first use and reused for every message.

Sends are serialized on that connection (SMTP is one transaction at a time per connection); the channel's
concurrency overlaps the database work around them. A dropped or refused connection is reopened by the
next send. Classification (docs/protocol.md §9): a 4xx reply, a refused or timed-out connection and a
failed login are transient (the job is retried; an SMTP server that is down holds every job); a 5xx reply
to the message (sender, recipient or data refused) is permanent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from worker.delivery.jobs import Outcome

if TYPE_CHECKING:
    from worker.delivery.render import EmailRenderer
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


class EmailSender:
    """Renders each job with :class:`EmailRenderer` and sends it to the address of the profile the claim
    read with the job."""

    channel = "email"

    def __init__(self, target: SmtpTarget, *, timeout: float, renderer: EmailRenderer) -> None:
        self._target = target
        self._timeout = timeout
        self._renderer = renderer
        self._smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._smtp is None or not self._smtp.is_connected:
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
            self._smtp = smtp
        return self._smtp

    async def send(self, job: Claimed) -> Outcome:
        """Send one email; a user without an address is skipped."""
        profile = job.profile
        if not profile["email"]:
            return Outcome.skipped("no email address")
        message = self._renderer.message(job.id, job.notification, profile, job.user_id)
        async with self._lock:
            try:
                smtp = await self._connection()
                await smtp.send_message(message)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0]
                return classify_reply(refused.code, refused.message)
            except _CONNECTION_ERRORS as exc:
                await self._drop()
                return Outcome.transient(f"smtp connection: {exc!r}")
            except aiosmtplib.SMTPResponseException as exc:
                return classify_reply(exc.code, exc.message)
            except aiosmtplib.SMTPException as exc:
                await self._drop()
                return Outcome.transient(f"smtp: {exc!r}")
        return Outcome.sent()

    async def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def close(self) -> None:
        """Say QUIT when connected, else just drop the socket."""
        async with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is not None and smtp.is_connected:
                try:
                    await smtp.quit()
                except aiosmtplib.SMTPException:
                    smtp.close()
