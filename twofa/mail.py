"""The activation mail: its text (SPEC "Email") and its delivery over SMTP."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib


def activation_mail(
    *, sender: str, to: str, code: str, expires_at: datetime, message_id: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Your Cockpit two-factor activation code"
    message["Message-ID"] = message_id
    message["Date"] = formatdate(usegmt=True)
    valid_until = expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    message.set_content(
        "Two-factor authentication was enabled for your Cockpit account.\n"
        "\n"
        f"Activation code: {code}\n"
        "\n"
        f"This code is valid until {valid_until}. Type it on the authentication page at your\n"
        "next login. If it expired, log in again to receive a new code.\n"
        "\n"
        "If you did not ask for this, contact your administrator.\n"
    )
    return message


async def deliver(message: EmailMessage, *, host: str, port: int) -> None:
    await aiosmtplib.send(message, hostname=host, port=port, timeout=20, start_tls=False)
