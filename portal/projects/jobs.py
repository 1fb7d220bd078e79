"""Periodic project work for ``portal worker``."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, col, delete

from portal.config import Settings
from portal.db import utcnow
from portal.projects.models import Invitation

#: Invitations that were never accepted are deleted this long after they expired (the invitee's
#: address is personal data the factory has no reason to keep).
INVITATION_RETENTION = timedelta(days=90)


def purge_stale_invitations(db: Session, _settings: Settings) -> int:
    """Delete unaccepted invitations that expired more than the retention period ago; returns the count."""
    cutoff = utcnow() - INVITATION_RETENTION
    result = db.exec(
        delete(Invitation).where(col(Invitation.accepted_at).is_(None), col(Invitation.expires_at) < cutoff)
    )
    db.commit()
    return int(result.rowcount or 0)
