"""Decisions and awards: accepting opens allocations through the ledger with the call's budget in one unit
of work, so a refusal (capacity run out, budget spent) changes nothing; rejecting; releasing held tranches.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import sqlalchemy as sa
from sqlmodel import Session, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.config import Settings
from portal.db import utcnow
from portal.errors import InvalidInput, NotFound
from portal.formatting import DEFAULT_LOCALE
from portal.grants.models import Application, Award, Call, CallBudget
from portal.grants.services.access import eligibility_problems, manager_context, requests_of, sentences
from portal.grants.services.states import BudgetExhausted, IllegalTransition, move, next_state, transaction
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import AllocationSource, EntryKind, Site
from portal.messages import N_, Amount, Message, Text, paragraphs, render, to_json
from portal.notifications.services import notify
from portal.projects.models import Project, ProjectMembership


def decide_automatically(
    db: Session, settings: Settings, call: Call, project: Project, application: Application
) -> None:
    # the reasons are stored in English, whatever the language of the request that submitted, and kept as messages
    # that the applicant's page and notice say in their reader's language
    problems = eligibility_problems(db, call, project)
    if problems:
        decide_reject(db, settings, None, application, reason=sentences(problems))
        return
    awards = {r.resource_id: r.requested for r, _ in requests_of(db, application)}
    try:
        decide_accept(db, settings, None, application, awarded=awards)
    except (BudgetExhausted, ledger.CapacityExhausted, ledger.NoCapacityPlanned) as exc:
        reason = Message(N_("No hours could be awarded: %(detail)s"), detail=exc.args[0])
        decide_reject(db, settings, None, application, reason=reason)


@transaction
def decide_reject(
    db: Session, settings: Settings, actor: User | None, application: Application, *, reason: str | Text
) -> Application:
    """Reject with ``reason``: as the call's manager wrote it, or the portal's own words (a ``Text``), which are
    stored in English and shown to each reader in their language."""
    call, project = manager_context(db, actor, application)
    said = render(reason, DEFAULT_LOCALE)
    if not said.strip():
        raise InvalidInput(Message(N_("Give the applicant the reasons.")), errors={"reason": Message(N_("Required."))})
    move(db, call, application, "reject")
    application.decision_reason = said.strip()[:5000]
    application.decision_message = None if isinstance(reason, str) else to_json(reason)
    _tell_members(
        db,
        settings,
        project,
        subject=Message(N_("Decision on “%(title)s”: not accepted"), title=application.title),
        body=paragraphs(
            Message(N_("Your application to “%(call)s” was not accepted."), call=call.title),
            Message(
                N_("Reasons: %(reasons)s"), reasons=application.decision_reason if isinstance(reason, str) else reason
            ),
        ),
        link=f"/applications/{application.id}",
    )
    summary = f"rejected '{application.title}' of project {project.id} in call '{call.title}'"
    audit.record(
        db, actor, AuditAction.APPLICATION_REJECTED, application, summary=summary, reason=application.decision_reason
    )
    db.commit()
    return application


def _tell_members(db: Session, settings: Settings, project: Project, *, subject: Text, body: Text, link: str) -> None:
    members = db.exec(
        select(User)
        .join(ProjectMembership, ProjectMembership.user_id == User.id)
        .where(ProjectMembership.project_id == project.id)
    ).all()
    for member in members:
        notify(db, settings, member, subject=subject, body=body, link=link)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for candidate in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, candidate))
        except ValueError:
            continue
    raise AssertionError("unreachable")


@transaction
def decide_accept(
    db: Session,
    settings: Settings,
    actor: User | None,
    application: Application,
    *,
    awarded: dict[int, int],
    first_tranche_percent: int = 100,
    reason: str = "",
    starts_on: date | None = None,
) -> Application:
    """Accept with ``awarded`` base units per resource (≤ requested, ≤ what is left of the call's budget).

    One unit of work: the budget is taken with a conditional UPDATE, the allocations are opened through
    the ledger (capacity reserved now, for every tranche); if anything is refused, nothing has happened.
    With ``first_tranche_percent`` below 100 the rest waits as a second tranche for ``release_tranche``,
    its capacity already held, so releasing it never fails for capacity.
    """
    call, project = manager_context(db, actor, application)
    if not 1 <= first_tranche_percent <= 100:
        raise InvalidInput(
            Message(N_("The first tranche is 1 to 100 % of the award.")), errors={"first_tranche_percent": "1–100"}
        )
    requests = {r.resource_id: (r, res) for r, res in requests_of(db, application)}
    errors: dict[str, Message] = {}
    for resource_id, amount in awarded.items():
        if resource_id not in requests:
            errors[f"awarded.{resource_id}"] = Message(N_("The application did not ask for this resource."))
        elif not 0 <= amount <= requests[resource_id][0].requested:
            errors[f"awarded.{resource_id}"] = Message(N_("Award between zero and the hours requested."))
    if not any(awarded.values()):
        errors["awarded"] = Message(N_("Award some hours, or reject the application."))
    if errors:
        raise InvalidInput(Message(N_("The award is not valid.")), errors=errors)
    next_state(call, application.state, "accept")
    start = starts_on or utcnow().date()
    starts_at, ends_at = _midnight(start), _midnight(_add_months(start, call.duration_months))
    budgets = db.exec(select(CallBudget).where(CallBudget.call_id == call.id)).all()
    budget_table = CallBudget.__table__
    with ledger.unit_of_work(db):
        for resource_id, amount in sorted(awarded.items()):
            if amount == 0:
                continue
            request, resource = requests[resource_id]
            budget = next(b for b in budgets if b.resource_id == resource_id)
            taken = db.execute(
                sa.update(budget_table)
                .where(budget_table.c.id == budget.id, budget_table.c.awarded + amount <= budget_table.c.budget)
                .values(awarded=budget_table.c.awarded + amount)
            )
            if taken.rowcount != 1:
                db.refresh(budget)
                raise BudgetExhausted(
                    Message(
                        N_("The call has %(left)s left for %(resource)s at %(site)s; %(amount)s were to be awarded."),
                        left=Amount(budget.budget - budget.awarded, resource.kind),
                        resource=resource.name,
                        site=db.get(Site, resource.site_id).name,
                        amount=Amount(amount, resource.kind),
                    )
                )
            first = amount * first_tranche_percent // 100
            allocation = ledger.open_allocation(
                db,
                None,
                project=project,
                resource=resource,
                amount=first,
                starts_at=starts_at,
                ends_at=ends_at,
                source=AllocationSource.AWARD,
                title=f"{call.access_mode.label}: {application.title}"[:200],
                idempotency_key=f"award:{application.id}:{resource_id}:1",
                reason=wording.AWARDED.english(application=application.id),
                held_for_later=amount - first,  # the second tranche's capacity, so its release never fails
            )
            request.awarded = amount
            db.add(
                Award(
                    application_id=application.id,
                    resource_id=resource_id,
                    tranche=1,
                    amount=first,
                    allocation_id=allocation.id,
                    released_at=utcnow(),
                )
            )
            if amount > first:
                db.add(
                    Award(
                        application_id=application.id,
                        resource_id=resource_id,
                        tranche=2,
                        amount=amount - first,
                        allocation_id=allocation.id,
                    )
                )
        move(db, call, application, "accept")
        application.decision_reason = reason.strip()[:5000]
        application.decision_message = None
        summary = f"accepted '{application.title}' of project {project.id} in call '{call.title}'"
        details = {"awarded": awarded, "first_tranche_percent": first_tranche_percent, "starts_on": start}
        audit.record(
            db, actor, AuditAction.APPLICATION_ACCEPTED, application, summary=summary, reason=reason, details=details
        )
        _tell_members(
            db,
            settings,
            project,
            subject=Message(N_("Decision on “%(title)s”: accepted"), title=application.title),
            body=paragraphs(
                Message(
                    N_(
                        "Your application to “%(call)s” was accepted. The hours are on the project page from "
                        "%(start)s to %(end)s."
                    ),
                    call=call.title,
                    start=start,
                    end=ends_at.date(),
                ),
                application.decision_reason,
            ),
            link=f"/projects/{project.id}",
        )
    return application


@transaction
def release_tranche(db: Session, settings: Settings, actor: User, award_id: int) -> Award:
    """Credit a held tranche to its allocation (after the progress report)."""
    award = db.get(Award, award_id)
    if award is None:
        raise NotFound(Message(N_("No such tranche.")))
    application = db.get(Application, award.application_id)
    assert application is not None
    call, project = manager_context(db, actor, application)
    if award.released_at is not None:
        raise IllegalTransition(Message(N_("This tranche was released already.")))
    with ledger.unit_of_work(db):
        ledger.credit(
            db,
            None,
            award.allocation_id,
            award.amount,
            kind=EntryKind.AWARD,
            idempotency_key=f"award:{application.id}:{award.resource_id}:{award.tranche}",
            reason=wording.TRANCHE.english(tranche=award.tranche, application=application.id),
            capacity_held=True,  # reserved with the decision
        )
        award.released_at = utcnow()
        summary = f"released tranche {award.tranche} of '{application.title}' to allocation {award.allocation_id}"
        details = {"amount": award.amount, "allocation_id": award.allocation_id, "application_id": application.id}
        audit.record(db, actor, AuditAction.TRANCHE_RELEASED, award, summary=summary, details=details)
        _tell_members(
            db,
            settings,
            project,
            subject=Message(N_("More hours for “%(title)s”"), title=application.title),
            body=Message(
                N_("Tranche %(tranche)s of your award from “%(call)s” is now on the project page."),
                tranche=str(award.tranche),
                call=call.title,
            ),
            link=f"/projects/{project.id}",
        )
    return award
