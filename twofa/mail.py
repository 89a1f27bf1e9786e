"""The mails (docs/api.md "The activation email", docs/rules.md S10) and their delivery over
SMTP, to the sink or a real relay."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import aiosmtplib

from twofa.config import Settings

log = logging.getLogger(__name__)

_KEY_PART = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_ENHANCED_STATUS = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})\b")


def message_id(kind: str, *parts: object) -> str:
    """Derived from what the mail is about, so a retried send carries the same Message-ID."""
    words = [kind, *(str(part) for part in parts)]
    if not all(_KEY_PART.fullmatch(word) for word in words):
        raise ValueError("a Message-ID part is letters, digits, '_', '-' and inner dots only")
    return f"<{kind}-{'.'.join(words[1:])}@cockpit-2fa>"


def _utc(moment: datetime) -> str:
    """A moment as the mails show it; a naive datetime is taken as UTC, as the store keeps them."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _mail(*, sender: str, to: str, subject: str, message_id: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message["Date"] = formatdate(usegmt=True)
    message.set_content(body)
    return message


def activation_mail(
    *, sender: str, to: str, code: str, expires_at: datetime, message_id: str
) -> EmailMessage:
    return _mail(
        sender=sender,
        to=to,
        subject="Your Cockpit two-factor activation code",
        message_id=message_id,
        body=(
            "Two-factor authentication was enabled for your Cockpit account.\n"
            "\n"
            f"Activation code: {code}\n"
            "\n"
            f"This code is valid until {_utc(expires_at)}. Type it on the authentication page"
            " at your\n"
            "next login. If it expired, log in again to receive a new code.\n"
            "\n"
            "If you did not ask for this, contact your administrator.\n"
        ),
    )


# -- S10: notifications. They name what happened and when, never a code, PIN, seal or token.

_NOT_YOU = (
    "If this was not you, someone may know your password: change it and contact your\n"
    "administrator.\n"
)


def browser_enrolled(
    *, sender: str, to: str, device_name: str | None, when: datetime, key: str
) -> EmailMessage:
    """S10: a browser became trusted; ``key`` names the enrollment (e.g. the device id)."""
    name = f'"{device_name}"' if device_name else "without a name"
    return _mail(
        sender=sender,
        to=to,
        subject="A new browser can now sign in to your Cockpit account",
        message_id=message_id("browser-enrolled", key),
        body=(
            f"A browser {name} was added to the trusted browsers of your Cockpit\n"
            f"account on {_utc(when)}.\n"
            "\n" + _NOT_YOU
        ),
    )


def two_factor_disabled(
    *, sender: str, to: str, by_admin: bool, when: datetime, key: str
) -> EmailMessage:
    """S10: 2FA was turned off (R10 also revoked every trusted browser)."""
    by = "by an administrator" if by_admin else "from your account"
    return _mail(
        sender=sender,
        to=to,
        subject="Two-factor authentication is off for your Cockpit account",
        message_id=message_id("two-factor-disabled", key),
        body=(
            f"Two-factor authentication was turned off {by} on {_utc(when)}.\n"
            "Every trusted browser was removed: your password alone now signs you in.\n"
            "\n"
            + (
                "If you did not ask for this, contact your administrator.\n"
                if by_admin
                else _NOT_YOU
            )
        ),
    )


def two_factor_locked(
    *, sender: str, to: str, locked_until: datetime | None, when: datetime, key: str
) -> EmailMessage:
    """S10, S2: too many wrong PINs; ``locked_until`` None means until an admin unlocks it."""
    if locked_until is None:
        until = "until an administrator unlocks it"
        what_to_do = "Contact your administrator to unlock it."
    else:
        until = f"until {_utc(locked_until)}"
        what_to_do = "After that time, log in again and type your PIN."
    return _mail(
        sender=sender,
        to=to,
        subject="Two-factor authentication is locked for your Cockpit account",
        message_id=message_id("two-factor-locked", key),
        body=(
            f"Too many wrong PINs were typed for your Cockpit account: on {_utc(when)}\n"
            f"its two-factor authentication was locked {until}.\n"
            "You cannot log in while it is locked.\n"
            "\n"
            f"{what_to_do}\n"
            "\n"
            "If you did not type these PINs, someone knows your password: contact your\n"
            "administrator.\n"
        ),
    )


# -- delivery


class MailRefused(Exception):
    """The mail was not sent. ``permanent``: sending it again as it is cannot succeed.

    The message names the step and the relay's reply code, never what the relay said (it may
    echo an address) nor any secret, so it can go to logs and to the workflow's history.
    """

    def __init__(self, reason: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(reason)
        self.permanent = permanent
        self.code = code


def _stage(error: aiosmtplib.SMTPResponseException) -> str:
    match error:
        case aiosmtplib.SMTPConnectResponseError():
            return "greeting"
        case aiosmtplib.SMTPHeloError():
            return "EHLO"
        case aiosmtplib.SMTPAuthenticationError():
            return "AUTH"
        case aiosmtplib.SMTPSenderRefused():
            return "MAIL FROM"
        case aiosmtplib.SMTPRecipientRefused():
            return "RCPT TO"
        case aiosmtplib.SMTPDataError():
            return "DATA"
    return "a command"


def _refused_by_reply(error: aiosmtplib.SMTPResponseException) -> MailRefused:
    """RFC 5321: a 5xx reply is final, anything else (4xx, 421 closing) may pass later."""
    enhanced = _ENHANCED_STATUS.match(error.message)
    detail = f" {enhanced.group(1)}" if enhanced else ""
    permanent = 500 <= error.code < 600
    return MailRefused(
        f"the relay answered {error.code}{detail} to {_stage(error)}",
        permanent=permanent,
        code=error.code,
    )


def _certificate_refused(error: BaseException) -> bool:
    """A verification failure, raised as is by STARTTLS and as a cause by implicit TLS."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        current = current.__cause__
    return False


def classify(error: Exception) -> MailRefused:
    """Sorts a failed send into retry-later (relay busy or down) or give-up (refused)."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return _refused_by_reply(error.recipients[0])
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return _refused_by_reply(error)
    if _certificate_refused(error):
        return MailRefused("the relay's TLS certificate did not verify", permanent=True)
    if isinstance(error, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return MailRefused("the relay did not answer in time", permanent=False)
    if isinstance(error, aiosmtplib.SMTPNotSupported):
        return MailRefused("the relay does not support what the mail needs", permanent=True)
    if isinstance(error, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError):
        return MailRefused("the relay could not be reached or hung up", permanent=False)
    if isinstance(error, aiosmtplib.SMTPException):
        # STARTTLS or AUTH not offered: a relay that does not match the settings
        return MailRefused(
            "the relay does not offer what TWOFA_SMTP_SECURITY and the login need",
            permanent=True,
        )
    return MailRefused("the connection to the relay failed", permanent=False)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Always verifies the relay's certificate and name: against the CA file, or the system's."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


async def deliver(message: EmailMessage, settings: Settings) -> None:
    """Hands the message to the configured relay; any failure comes out as ``MailRefused``."""
    security = settings.smtp_security
    context = None
    if security != "none":
        context = await asyncio.to_thread(tls_context, settings.smtp_ca_file)
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    try:
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            timeout=settings.smtp_timeout_seconds,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            tls_context=context,
            username=settings.smtp_username,
            password=password,
        )
    except (aiosmtplib.SMTPException, OSError) as error:
        refused = classify(error)
        log.warning(
            "mail %s not sent (%s, %s): %s",
            message["Message-ID"],
            "permanent" if refused.permanent else "transient",
            type(error).__name__,
            refused,
        )
        # no chained cause: the library's text may quote the relay, which may quote an address
        raise refused from None
