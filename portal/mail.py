"""Outgoing e-mail: one function, two backends (the log for the demo, SMTP for everything else)."""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

from portal.config import Settings

log = logging.getLogger("portal.mail")


def send_mail(settings: Settings, *, to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    if settings.mail_backend == "log":
        log.info("e-mail to %s: %s\n%s", to, subject, body)
        return
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_username:
            smtp.login(settings.smtp_username, settings.smtp_password or "")
        smtp.send_message(message)
