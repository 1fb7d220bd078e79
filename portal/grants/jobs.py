"""Periodic grant work for ``portal worker``."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.db import utcnow
from portal.grants.models import Application, Review, ReviewState
from portal.identity.models import User
from portal.notifications.services import notify

#: Reviewers are reminded this many days before a review is due, and again each day once it is late.
REMIND_DAYS_BEFORE = 2


def remind_due_reviews(db: Session, settings: Settings) -> int:
    """Remind reviewers of open reviews due within two days or overdue, at most once a day each.

    The reminder is claimed with a conditional UPDATE before it is sent, so two workers never both send it.
    """
    now = utcnow()
    horizon = now.date() + timedelta(days=REMIND_DAYS_BEFORE)
    due = db.exec(
        select(Review, Application, User)
        .join(Application, Application.id == Review.application_id)  # type: ignore[arg-type]
        .join(User, User.id == Review.reviewer_id)  # type: ignore[arg-type]
        .where(
            Review.state == ReviewState.ASSIGNED,
            col(Review.due_on).is_not(None),
            col(Review.due_on) <= horizon,
            sa.or_(col(Review.reminded_at).is_(None), col(Review.reminded_at) < now - timedelta(hours=23)),
        )
    ).all()
    db.rollback()
    table = Review.__table__  # type: ignore[attr-defined]
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
        late = review.due_on < now.date()  # type: ignore[operator]
        notify(
            db,
            settings,
            reviewer,
            subject=f"Review {'overdue' if late else 'due'}: {application.title}",
            body=f"Your {review.kind} review of “{application.title}” "
            + (f"was due on {review.due_on}." if late else f"is due on {review.due_on}."),
            link=f"/reviews/{review.id}",
        )
        db.commit()
        sent += 1
    return sent
