"""Telling the owner of a notebook server the portal stopped: the reason in their language, how long it ran and
what was charged, in an inbox entry (and e-mail).
"""

from __future__ import annotations

from sqlmodel import Session

from portal.classroom.services import CAP_REACHED, COURSE_CLOSED, REMOVED
from portal.compute.notebook_charges import EXHAUSTED, TIME_LIMIT
from portal.config import Settings
from portal.identity.models import User
from portal.messages import N_, Message
from portal.notebook_models import NotebookSession

#: Stops the portal decides on (not the owner's own): the owner gets a notice saying why.
#: Why the portal stopped a server (``NotebookSession.stop_reason``), as its owner reads it in a notice.
_REASONS = {
    EXHAUSTED: N_("allocation exhausted"),
    TIME_LIMIT: N_("time limit reached"),
    CAP_REACHED: N_("course cap reached"),
    REMOVED: N_("removed from course"),
    COURSE_CLOSED: N_("course closed"),
    "allocation ended": N_("allocation ended"),
    "allocation expired": N_("allocation expired"),
    "allocation suspended": N_("allocation suspended"),
    "allocation pending": N_("allocation pending"),
    "allocation awaiting_payment": N_("allocation awaiting payment"),
}
#: The same, as the sentence of the notice that explains it.
_TOLD = {
    EXHAUSTED: N_(
        "The portal stopped your notebook server %(name)s (%(profile)s) because its allocation has no hours left."
    ),
    TIME_LIMIT: N_(
        "The portal stopped your notebook server %(name)s (%(profile)s) because it reached the number of hours you "
        "chose when you started it."
    ),
}


def _tell_owner(db: Session, settings: Settings, session: NotebookSession, reason: str) -> None:
    """An inbox entry (and e-mail) for a server the portal stopped, saying why, in the owner's language;
    committed here."""
    from portal.notifications.services import notify

    owner = db.get(User, session.user_id)
    if owner is None:
        return
    named = {"name": session.server_name, "profile": session.profile}
    shown_reason = Message(_REASONS[reason]) if reason in _REASONS else reason
    if reason in _TOLD:
        why = Message(_TOLD[reason], **named)
    else:
        why = Message(
            N_("The portal stopped your notebook server %(name)s (%(profile)s) because of this: %(reason)s."),
            reason=shown_reason,
            **named,
        )
    charged = session.charged_seconds
    if session.charged_from_slurm:
        cost = Message(
            N_(
                "It ran as a job on the cluster %(cluster)s, which charges the allocation for the time and GPUs the "
                "job really held once the job has ended."
            ),
            cluster=session.slurm_cluster,
        )
    else:
        cost = Message(
            N_("It ran for %(hours)s h %(minutes)s min, all of which is charged to the allocation."),
            hours=str(charged // 3600),
            minutes=str(charged % 3600 // 60),
        )
    notify(
        db,
        settings,
        owner,
        subject=Message(
            N_("Your notebook %(name)s was stopped: %(reason)s"), name=session.server_name, reason=shown_reason
        ),
        body=why
        + cost
        + Message(N_("Files in your home directory are kept; start a new notebook from the project page.")),
        link=f"/notebooks/{session.id}",
    )
    db.commit()
