"""Outgoing e-mail: one function, two backends (the log for the demo, SMTP for everything else).

Subjects are built from what users typed (project and application titles, people's names): a line break
there must neither break the message nor add a header, so every header value is made one line here, the
one place that writes headers. A recipient the message cannot go to raises :class:`MailNotSent`; callers
that mail several people catch it per recipient (``send_mail_to_each``), so one bad address stops nobody
else's mail.
"""

from __future__ import annotations

import logging
import re
import smtplib
from collections.abc import Iterable
from email.errors import HeaderParseError, NonASCIILocalPartDefect
from email.message import EmailMessage

from portal.config import Settings

log = logging.getLogger("portal.mail")

#: Everything ``str.splitlines`` breaks on (LF, CR, VT, FF, FS, GS, RS, NEL, LS, PS) and the other C0/C1
#: controls: none may stand in a header value.
_LINE_BREAKS_AND_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


class MailNotSent(OSError):
    """This message could not be sent (the recipient's address is unusable, or the server refused it).

    An ``OSError``, like the mail server's own failures, so that callers that treat an unreachable server
    as an outage treat a refused message the same way.
    """


def one_line(value: str) -> str:
    """``value`` as one header line: line breaks and control characters become single spaces."""
    return " ".join(_LINE_BREAKS_AND_CONTROLS.sub(" ", value).split())


def _set_recipient(message: EmailMessage, to: str) -> None:
    """``To: to``, or :class:`MailNotSent` if ``to`` is no single usable address (a line break, a list, garbage)."""
    if _LINE_BREAKS_AND_CONTROLS.search(to):
        raise MailNotSent(f"the address {to!r} contains a line break or control character")
    try:
        message["To"] = to.strip()
        header = message["To"]
        addresses = header.addresses
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise MailNotSent(f"the address {to!r} is not a valid e-mail address: {exc}") from exc
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]  # SMTPUTF8 may carry it
    if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain or defects:
        raise MailNotSent(f"the address {to!r} is not one valid e-mail address")


def send_mail(settings: Settings, *, to: str, subject: str, body: str) -> None:
    """Send one message; raises :class:`MailNotSent` (an ``OSError``) when it cannot go out."""
    message = EmailMessage()
    message["From"] = one_line(settings.mail_from)
    _set_recipient(message, to)
    message["Subject"] = one_line(subject)
    message.set_content(body)
    if settings.mail_backend == "log":
        log.info("e-mail to %s: %s\n%s", message["To"], message["Subject"], body)
        return
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password or "")
            smtp.send_message(message)
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPNotSupportedError) as exc:
        raise MailNotSent(f"the mail server refused the message to {to!r}: {exc}") from exc


def send_mail_to_each(settings: Settings, recipients: Iterable[str], *, subject: str, body: str) -> list[str]:
    """Send the same message to each recipient on its own; returns those it could not go to (each logged).

    One refused address does not keep the message from the others.
    """
    failed: list[str] = []
    for address in recipients:
        try:
            send_mail(settings, to=address, subject=subject, body=body)
        except OSError:
            log.exception("could not e-mail %r about %r", address, one_line(subject))
            failed.append(address)
    return failed
