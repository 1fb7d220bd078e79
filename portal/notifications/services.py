"""Telling people things: an inbox entry (in the caller's transaction) and an e-mail, in the reader's language."""

from __future__ import annotations

import logging

from sqlmodel import Session, col, func, select

from portal.config import Settings
from portal.db import utcnow
from portal.errors import NotFound
from portal.identity.models import User
from portal.mail import one_line, send_mail
from portal.messages import N_, Message, Text, language_of, render, to_json
from portal.notifications.models import Notification

log = logging.getLogger("portal.notifications")


def notify(
    db: Session, settings: Settings, user: User, *, subject: Text | str, body: Text | str, link: str = ""
) -> Notification:
    """Add an inbox entry for ``user`` (committed with the caller's work) and e-mail it, both in their language
    (``subject`` and ``body`` are ``portal.messages`` texts, rendered for them here).

    A failing mail server or an unusable address does not undo the caller's work, nor stop the notices
    of others: the notice stays in the inbox and the failure is logged.
    """
    language = language_of(settings, user)
    message = {"subject": to_json(subject), "body": to_json(body)}
    subject, body = render(subject, language), render(body, language)
    notification = Notification(user_id=user.id, subject=one_line(subject)[:300], body=body, link=link, message=message)
    db.add(notification)
    if user.email:
        try:
            send_mail(
                settings,
                to=user.email,
                subject=subject,
                body=body + (f"\n\n{settings.base_url}{link}\n" if link else ""),
            )
        except Exception:  # the inbox entry is the record; the e-mail is a courtesy
            log.exception("could not e-mail %r about %r", user.email, one_line(subject))
    return notification


def inbox(db: Session, actor: User, *, limit: int = 50) -> list[Notification]:
    return list(
        db.exec(
            select(Notification)
            .where(Notification.user_id == actor.id)
            .order_by(col(Notification.created_at).desc(), col(Notification.id).desc())
            .limit(limit)
        )
    )


def unread_count(db: Session, actor: User) -> int:
    return int(
        db.exec(select(func.count()).where(Notification.user_id == actor.id, col(Notification.read_at).is_(None))).one()
    )


def mark_read(db: Session, actor: User, notification_id: int) -> Notification:
    notification = db.get(Notification, notification_id)
    if notification is None or notification.user_id != actor.id:
        raise NotFound(Message(N_("No such notification.")))
    if notification.read_at is None:
        notification.read_at = utcnow()
        db.commit()
    return notification
