"""Settings of ``herald-delivery`` only: every :class:`shared.settings.Settings` field plus the senders'.

Same rules as the shared settings (prefix ``HERALD_``, ``.env``, one clear line for a bad value).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator

from shared.settings import Settings, describe_validation_error, exit_with_config_error

_SMTP_SCHEMES = ("smtp", "smtps")


class DeliverySettings(Settings):
    """What ``herald-delivery`` reads beyond :class:`Settings` (defaults in brackets).

    Process
        delivery_http_host, delivery_http_port: ``/healthz``, ``/readyz``, ``/metrics`` [127.0.0.1, 8768].
        email_concurrency, push_concurrency: jobs of the channel in flight per process (a claim takes the
            free slots once half are free; also the prefetch of its queue of other services' jobs) [20, 50].
        delivery_max_attempts: attempts before a transiently failing job fails for good [8].
        delivery_retry_base_seconds, delivery_retry_max_seconds: exponential backoff between attempts,
            jittered over its upper half (a delay of d waits between d/2 and d) [2, 600].
        delivery_lease_seconds: how long a claim lasts; the holder renews it every third of this while
            it lives, so a process killed while sending leaves its jobs to be claimed again after this
            [60].
        delivery_poll_seconds: pause between two looks for due jobs when no ``NOTIFY`` came (delayed jobs,
            retries, a lost listener), and between two attempts to listen again [1].

    Email
        smtp_url: ``smtp://[user:pass@]host:port`` (``?starttls=true`` to upgrade), ``smtps://`` for
            implicit TLS; unset = email jobs wait (scheduled) until it is configured.
        smtp_timeout: seconds for connecting and each SMTP command [30].
        smtp_connections: SMTP connections per process, each reused for message after message; sends
            beyond them wait for one; more than one overlaps the round trips to a distant relay [1].
        smtp_rate: messages per second per process [50].
        email_from: the From address [``Herald <herald@localhost>``].
        templates_dir: a directory whose templates override the shipped ones (same names).
        unsubscribe_url: ``List-Unsubscribe`` URL template with ``{user_id}`` and ``{type}``; unset = none.
        app_name: the product name in the templates [Herald].

    Web Push
        vapid_subject: ``mailto:`` or ``https:`` contact in the VAPID claims [``mailto:admin@localhost``].
        push_rate: pushes per second per process [200].
        push_ttl: ``TTL`` header, seconds the push service keeps an undelivered message [86400].
        push_timeout: seconds a push request may take in all (a pool slot, connecting, sending, the
            reply's status and the first KiB of its body), not per read [10].
    """

    delivery_http_host: str = "127.0.0.1"
    delivery_http_port: int = Field(default=8768, ge=0, le=65535)
    email_concurrency: int = Field(default=20, ge=1, le=1000)
    push_concurrency: int = Field(default=50, ge=1, le=1000)
    delivery_max_attempts: int = Field(default=8, ge=1, le=100)
    delivery_retry_base_seconds: float = Field(default=2.0, gt=0)
    delivery_retry_max_seconds: float = Field(default=600.0, gt=0)
    delivery_lease_seconds: float = Field(default=60.0, gt=0)
    delivery_poll_seconds: float = Field(default=1.0, gt=0)

    smtp_url: SecretStr | None = None
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_connections: int = Field(default=1, ge=1, le=100)
    smtp_rate: float = Field(default=50.0, gt=0)
    email_from: str = "Herald <herald@localhost>"
    templates_dir: Path | None = None
    unsubscribe_url: str | None = None
    app_name: str = "Herald"

    vapid_subject: str = Field(default="mailto:admin@localhost", pattern=r"^(mailto:|https://)\S+$")
    push_rate: float = Field(default=200.0, gt=0)
    push_ttl: int = Field(default=86400, ge=0)
    push_timeout: float = Field(default=10.0, gt=0)

    @field_validator("smtp_url", "templates_dir", "unsubscribe_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # compose's `${VAR:-}`

    @field_validator("smtp_url", mode="after")
    @classmethod
    def _check_smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme not in _SMTP_SCHEMES or not parts.hostname:
                raise ValueError("must be smtp://[user:pass@]host[:port] or smtps://...")
            unknown = set(parse_qs(parts.query)) - {"starttls"}
            if unknown:
                raise ValueError(f"unknown query parameter {sorted(unknown)[0]!r} (only starttls)")
        return value

    @field_validator("templates_dir", mode="after")
    @classmethod
    def _check_templates_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError("must be an existing directory")
        return value

    @field_validator("unsubscribe_url", mode="after")
    @classmethod
    def _check_unsubscribe_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(user_id="u", type="T")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"only {{user_id}} and {{type}} may be substituted ({exc!r})") from None
        return value


def load_delivery_settings(**overrides: object) -> DeliverySettings:
    """Build :class:`DeliverySettings`, or exit with status 2 and one line naming the bad variable."""
    try:
        return DeliverySettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        exit_with_config_error(describe_validation_error(exc))
