"""Email content from Jinja2 templates: subject, text and autoescaped HTML, plus the §9 headers.

Templates are looked up by name, first in ``HERALD_TEMPLATES_DIR`` (when set), then in the defaults shipped
in ``worker/delivery/templates/``. For a notification of type ``T`` to a user with locale ``L`` (say
``pt-BR``) each part (``.subject.txt``, ``.txt``, ``.html``) takes the first that exists of
``T.pt-BR``, ``T.pt``, ``T``, ``default.pt-BR``, ``default.pt``, ``default`` — docs/protocol.md §9's
``<TYPE>.<locale>`` → ``<TYPE>`` → ``default``, with the language alone tried after a regional locale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, parseaddr
from typing import TYPE_CHECKING, Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)

from shared.events import PROFILE_FIELDS
from worker.text import refuse_control_characters

if TYPE_CHECKING:
    from pathlib import Path

    from jinja2 import BaseLoader, Template


def template_names(notification_type: str, locale: str | None, part: str) -> list[str]:
    """The fallback chain of one part (``subject.txt``, ``txt`` or ``html``), most specific first."""
    locales: list[str] = []
    if locale:
        locales.append(locale)
        language = locale.replace("_", "-").split("-", 1)[0]
        if language != locale:
            locales.append(language)
    names = [f"{notification_type}.{loc}.{part}" for loc in locales] + [f"{notification_type}.{part}"]
    return names + [f"default.{loc}.{part}" for loc in locales] + [f"default.{part}"]


def link_of(notification: dict[str, Any]) -> str | None:
    """The notification's click target: its ``url`` (PROTOCOL §10, validated http(s) when the event was
    taken), else ``data.url`` when that is an http(s) link, the only kind a button gets. The same order
    as the service worker's for a push."""
    url = notification.get("url") or (notification.get("data") or {}).get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return url
    return None


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """One email's subject and its two bodies."""

    subject: str
    text: str
    html: str


class EmailRenderer:
    """Renders notifications to emails and wraps them in a message with Herald's headers."""

    def __init__(
        self, *, templates_dir: Path | None, app_name: str, sender: str, unsubscribe_url: str | None
    ) -> None:
        loaders: list[BaseLoader] = [FileSystemLoader(templates_dir)] if templates_dir else []
        loaders.append(PackageLoader("worker.delivery", "templates"))
        self._env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            auto_reload=False,  # templates are read once per process (see ``_templates``)
        )
        # (type, locale) → the subject, text and HTML templates its fallback chain selected: resolving a
        # chain costs a lookup per name tried, and it is the same for every job of that type and locale.
        self._templates: dict[tuple[str, str | None], tuple[Template, Template, Template]] = {}
        self._app_name = app_name
        self._sender = sender
        self.envelope_sender = parseaddr(sender)[1]
        self._domain = self.envelope_sender.rpartition("@")[2] or "herald.invalid"
        self._unsubscribe_url = unsubscribe_url

    def unsubscribe_link(self, user_id: str, notification_type: str) -> str | None:
        """``HERALD_UNSUBSCRIBE_URL`` filled in, or ``None`` when it is not set."""
        if self._unsubscribe_url is None:
            return None
        return self._unsubscribe_url.format(user_id=user_id, type=notification_type)

    def render(
        self, notification: dict[str, Any], profile: dict[str, Any], unsubscribe: str | None
    ) -> RenderedEmail:
        """Subject, text and HTML of ``notification`` for the user with ``profile``."""
        context = {
            **notification,
            "url": link_of(notification),
            "notification": notification,
            "user": {**dict.fromkeys(PROFILE_FIELDS), **profile},
            "app_name": self._app_name,
            "unsubscribe_url": unsubscribe,
        }
        subject, text, html = (
            template.render(context) for template in self._select(notification["type"], profile.get("locale"))
        )
        return RenderedEmail(" ".join(subject.split()), text, html)

    def _select(self, notification_type: str, locale: str | None) -> tuple[Template, Template, Template]:
        key = (notification_type, locale)
        selected = self._templates.get(key)
        if selected is None:
            subject, text, html = (
                self._env.select_template(template_names(notification_type, locale, part))
                for part in ("subject.txt", "txt", "html")
            )
            selected = self._templates[key] = (subject, text, html)
        return selected

    def message(
        self,
        job_id: str,
        version: int | None,
        notification: dict[str, Any],
        profile: dict[str, Any],
        user_id: str,
    ) -> MIMEMultipart:
        """The multipart/alternative message of one job's ``version``, addressed to the profile's email.

        Built with the ``email.mime`` classes (the compat32 policy): ``EmailMessage`` with the default
        policy re-parses every header it is given, about 15 times slower, and a message is built per job.
        """
        unsubscribe = self.unsubscribe_link(user_id, notification["type"])
        rendered = self.render(notification, profile, unsubscribe)
        message = MIMEMultipart("alternative")
        message["From"] = formataddr(parseaddr(self._sender), "utf-8")
        message["To"] = profile["email"]
        message["Subject"] = _header(rendered.subject)
        message["Date"] = formatdate(localtime=False, usegmt=True)  # RFC 5322 requires an origination date
        # A version of a job always gets the same Message-ID, so a resend after a crash is recognisable,
        # and a later version of a collapsed notification (the same row, amendment 25) another one, so a
        # receiver that drops repeated Message-IDs does not drop it. Version 1 keeps the job's own.
        identity = job_id if version is None or version <= 1 else f"{job_id}:{version}"
        digest = hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()
        message["Message-ID"] = f"<{digest}@{self._domain}>"
        message["X-Herald-Notification-Id"] = _single_line(notification["id"])
        message["X-Herald-Type"] = _single_line(notification["type"])
        if unsubscribe is not None:
            message["List-Unsubscribe"] = f"<{_single_line(unsubscribe)}>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.attach(MIMEText(rendered.text, "plain", "utf-8"))
        message.attach(MIMEText(rendered.html, "html", "utf-8"))
        return message


def _single_line(value: str) -> str:
    """``value`` as a header's text; ``ValueError`` (the job fails for good) when it holds a control
    character or line break, which would start a header of its own. Jobs are checked when they arrive
    (:class:`~worker.delivery.jobs.JobNotification`), but not the user id in the unsubscribe link, nor
    rows recorded before that check."""
    try:
        return refuse_control_characters(value)
    except ValueError as exc:
        raise ValueError(f"header value {value!r} {exc}") from None


def _header(value: str) -> str:
    """``value`` as is when ASCII, else RFC 2047 encoded (compat32 headers do not encode by themselves)."""
    return value if value.isascii() else Header(value, "utf-8").encode()
