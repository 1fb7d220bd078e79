"""The states of an application and the only moves between them; the refusals every step can meet; and
``transaction``, which makes each service own its unit of work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlmodel import Session

from portal import formatting
from portal.db import utcnow
from portal.errors import Conflict
from portal.grants.models import Application, ApplicationState, Call, ReviewMode
from portal.messages import N_, Message, Text

S = ApplicationState
P = ParamSpec("P")
T = TypeVar("T")


def transaction(work: Callable[Concatenate[Session, P], T]) -> Callable[Concatenate[Session, P], T]:
    """The service owns its transaction: it commits what it did, and any refusal or failure rolls back what it
    had begun, so the caller (a view, a job) never finds a half-done step in its session."""

    @functools.wraps(work)
    def run(db: Session, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return work(db, *args, **kwargs)
        except BaseException:
            db.rollback()
            raise

    return run


class IllegalTransition(Conflict):
    """The application is not in a state where this step can happen."""

    title = "Not possible in this state"


class NotEligible(Conflict):
    title = "Not eligible"


class ConflictOfInterest(Conflict):
    title = "Conflict of interest"


class BudgetExhausted(Conflict):
    title = "Call budget exhausted"


#: (state, step) -> next state. Steps not listed for a state are illegal there.
TRANSITIONS: dict[tuple[ApplicationState, str], ApplicationState] = {
    (S.DRAFT, "submit"): S.SUBMITTED,
    (S.SUBMITTED, "pass_administrative_check"): S.TECHNICAL_ASSESSMENT,
    (S.TECHNICAL_ASSESSMENT, "complete_technical_assessment"): S.PEER_REVIEW,
    (S.PEER_REVIEW, "request_reply"): S.REPLY,
    (S.REPLY, "rank"): S.RANKED,
    (S.RANKED, "accept"): S.ACCEPTED,
    **{
        (state, "reject"): S.REJECTED
        for state in (S.SUBMITTED, S.TECHNICAL_ASSESSMENT, S.PEER_REVIEW, S.REPLY, S.RANKED)
    },
    **{
        (state, "withdraw"): S.WITHDRAWN
        for state in (S.DRAFT, S.SUBMITTED, S.TECHNICAL_ASSESSMENT, S.PEER_REVIEW, S.REPLY, S.RANKED)
    },
}
#: Shortcuts of the lighter review modes.
MODE_TRANSITIONS: dict[tuple[ReviewMode, ApplicationState, str], ApplicationState] = {
    (ReviewMode.AUTOMATIC, S.SUBMITTED, "accept"): S.ACCEPTED,
    (ReviewMode.TECHNICAL, S.TECHNICAL_ASSESSMENT, "complete_technical_assessment"): S.RANKED,
}

#: Why a step is refused in a state, per step (the state is named in the reader's words).
_CANNOT = {
    "submit": N_("An application that is %(state)s cannot submit."),
    "pass_administrative_check": N_("An application that is %(state)s cannot pass administrative check."),
    "complete_technical_assessment": N_("An application that is %(state)s cannot complete technical assessment."),
    "request_reply": N_("An application that is %(state)s cannot request reply."),
    "rank": N_("An application that is %(state)s cannot rank."),
    "accept": N_("An application that is %(state)s cannot accept."),
    "reject": N_("An application that is %(state)s cannot reject."),
    "withdraw": N_("An application that is %(state)s cannot withdraw."),
}


class Term(Text):
    """A word the catalogue has with a context (``pgettext``), such as a state's name, as a message's value:
    ``Term("application state", "peer review")`` is ``recenzja naukowa`` to a Polish reader."""

    def __init__(self, context: str, word: str) -> None:
        self.context, self.word = context, word

    def render(self, locale: str) -> str:
        if locale == formatting.DEFAULT_LOCALE:
            return self.word
        return formatting.catalogue(locale).pgettext(self.context, self.word) or self.word


def state_name(state: ApplicationState) -> Term:
    """The state as the pages name it (``peer review``), in the reader's language."""
    return Term("application state", state.label)


FINAL_STATES = frozenset({S.ACCEPTED, S.REJECTED, S.WITHDRAWN})
QUESTION_TYPES = frozenset({"text", "number", "choice", "pdf"})
MIN_SCIENTIFIC_REVIEWS = 2


def next_state(call: Call, state: ApplicationState, step: str) -> ApplicationState:
    target = MODE_TRANSITIONS.get((call.review_mode, state, step)) or TRANSITIONS.get((state, step))
    if target is None:
        cannot = _CANNOT.get(step)
        if cannot is None:  # a step no caller names: said in English, as it is written
            raise IllegalTransition(f"An application that is {state.label} cannot {step.replace('_', ' ')}.")
        raise IllegalTransition(Message(cannot, state=state_name(state)))
    return target


def move(db: Session, call: Call, application: Application, step: str) -> None:
    """Change the state with a conditional UPDATE, so two simultaneous steps cannot both happen."""
    target = next_state(call, application.state, step)
    table = Application.__table__
    now = utcnow()
    values: dict[str, Any] = {"state": target.value, "updated_at": now}
    if target in FINAL_STATES:
        values["decided_at"] = now
    result = db.execute(
        sa.update(table).where(table.c.id == application.id, table.c.state == application.state.value).values(**values)
    )
    if result.rowcount != 1:
        db.rollback()
        raise IllegalTransition(Message(N_("The application changed in the meantime; reload and try again.")))
    db.refresh(application)
