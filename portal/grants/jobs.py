"""Periodic grant work for ``portal worker``."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.db import utcnow
from portal.grants import outputs
from portal.grants.models import Application, Review, ReviewKind, ReviewState
from portal.identity.models import User
from portal.messages import N_, Message
from portal.notifications.services import notify

#: Reviewers are reminded this many days before a review is due, and again each day once it is late.
REMIND_DAYS_BEFORE = 2
#: The reminder's sentence, per kind of review and whether it is late.
_REMINDER = {
    (ReviewKind.TECHNICAL, False): N_("Your technical review of “%(title)s” is due on %(due)s."),
    (ReviewKind.TECHNICAL, True): N_("Your technical review of “%(title)s” was due on %(due)s."),
    (ReviewKind.SCIENTIFIC, False): N_("Your scientific review of “%(title)s” is due on %(due)s."),
    (ReviewKind.SCIENTIFIC, True): N_("Your scientific review of “%(title)s” was due on %(due)s."),
}


def remind_due_reviews(db: Session, settings: Settings) -> int:
    """Remind reviewers of open reviews due within two days or overdue, at most once a day each.

    The reminder is claimed with a conditional UPDATE before it is sent, so two workers never both send it.
    """
    now = utcnow()
    horizon = now.date() + timedelta(days=REMIND_DAYS_BEFORE)
    due = db.exec(
        select(Review, Application, User)
        .join(Application, Application.id == Review.application_id)
        .join(User, User.id == Review.reviewer_id)
        .where(
            Review.state == ReviewState.ASSIGNED,
            col(Review.due_on).is_not(None),
            col(Review.due_on) <= horizon,
            sa.or_(col(Review.reminded_at).is_(None), col(Review.reminded_at) < now - timedelta(hours=23)),
        )
    ).all()
    db.rollback()
    table = Review.__table__
    sent = 0
    for review, application, reviewer in due:
        claimed = db.execute(
            sa.update(table)
            .where(
                table.c.id == review.id,
                sa.or_(table.c.reminded_at.is_(None), table.c.reminded_at < now - timedelta(hours=23)),
            )
            .values(reminded_at=now)
        )
        if claimed.rowcount != 1:
            db.rollback()
            continue
        late = review.due_on < now.date()
        notify(
            db,
            settings,
            reviewer,
            subject=Message(
                N_("Review overdue: %(title)s") if late else N_("Review due: %(title)s"), title=application.title
            ),
            body=Message(_REMINDER[review.kind, late], title=application.title, due=review.due_on),
            link=f"/reviews/{review.id}",
        )
        db.commit()
        sent += 1
    return sent


def request_award_reports(db: Session, settings: Settings) -> int:
    """Ask the PIs of awards for their progress report at the middle of the allocations' period and the final
    report at the end, then remind them of reports due soon and tell them of overdue ones (each notice once)."""
    now = utcnow()
    return outputs.request_award_reports(db, settings, now=now) + outputs.remind_award_reports(db, settings, now=now)
