"""Research outputs and the reports an award owes: what EuroHPC-style access asks of the projects it funds.

- *Outputs*: publications, data sets and software a project lists. Nothing is looked up online, so the page
  works offline and a resolver outage changes nothing: the DOI and the citation are kept as entered, the DOI
  checked only for the syntax of the DOI Handbook. Every member sees them; the PI and managers edit them.
- *Reports*: for each accepted application the worker (``request_award_reports``) asks the PI for a progress
  report at the middle of its allocations' period and a final report at their end, due some days later
  (``progress_report_due_days``, ``final_report_due_days``); it reminds the PI before a report is due
  (``report_reminder_days``) and tells them once it is overdue. The call's manager sees the reports of the
  call, overdue ones first; a new application of the project to the same call is warned, not stopped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from portal.authz import Action, allowed, project_role, require
from portal.config import Settings
from portal.db import utcnow
from portal.errors import Conflict, InvalidInput, NotFound
from portal.grants.models import (
    Application,
    ApplicationState,
    Award,
    Call,
    OutputKind,
    ProgressReport,
    ReportKind,
    ResearchOutput,
)
from portal.identity.models import User
from portal.ledger.models import Allocation
from portal.messages import N_, Message, Text
from portal.notifications.services import notify
from portal.projects.models import Project, ProjectMembership, ProjectRole

#: A DOI name as the DOI Handbook (section 2.2) defines it: the directory indicator ``10``, a registrant code of
#: digits (4 or more, as registration agencies assign them, optionally subdivided: ``10.1000.10``), a slash, and
#: a suffix of any printable characters without spaces. DOIs are case-insensitive; the case entered is kept.
DOI_SYNTAX = re.compile(r"10\.[0-9]{4,9}(?:\.[0-9]+)*/[^\s\x00-\x1f\x7f]+")
#: Resolver prefixes people paste with a DOI; the DOI is what follows them.
DOI_PREFIXES = ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "http://dx.doi.org/", "doi:")
FIRST_YEAR = 1900
CITATION_LENGTH = 2000
URL_LENGTH = 500
REPORT_LENGTH = 20_000

# The notices about reports, a sentence per kind of report (so that every language can word each).
_SUBMITTED_SUBJECT = {
    ReportKind.PROGRESS: N_("Progress report submitted: %(title)s"),
    ReportKind.FINAL: N_("Final report submitted: %(title)s"),
}
_SUBMITTED = {
    ReportKind.PROGRESS: N_(
        "%(who)s submitted the progress report on “%(title)s” (%(project)s), awarded in “%(call)s”."
    ),
    ReportKind.FINAL: N_("%(who)s submitted the final report on “%(title)s” (%(project)s), awarded in “%(call)s”."),
}
_REQUESTED_SUBJECT = {
    ReportKind.PROGRESS: N_("Progress report requested: %(title)s"),
    ReportKind.FINAL: N_("Final report requested: %(title)s"),
}
_REQUESTED = {
    ReportKind.PROGRESS: N_(
        "Please write the progress report on “%(title)s” by %(due)s: what the hours were used for and what came "
        "of them."
    ),
    ReportKind.FINAL: N_(
        "Please write the final report on “%(title)s” by %(due)s: what the hours were used for and what came of them."
    ),
}
_REMINDER_SUBJECT = {
    (ReportKind.PROGRESS, False): N_("Progress report due soon: %(title)s"),
    (ReportKind.PROGRESS, True): N_("Progress report overdue: %(title)s"),
    (ReportKind.FINAL, False): N_("Final report due soon: %(title)s"),
    (ReportKind.FINAL, True): N_("Final report overdue: %(title)s"),
}
_REMINDER = {
    (ReportKind.PROGRESS, False): N_("The progress report on “%(title)s” is due on %(due)s."),
    (ReportKind.PROGRESS, True): N_("The progress report on “%(title)s” was due on %(due)s."),
    (ReportKind.FINAL, False): N_("The final report on “%(title)s” is due on %(due)s."),
    (ReportKind.FINAL, True): N_("The final report on “%(title)s” was due on %(due)s."),
}


# --- research outputs --------------------------------------------------------------------------------------


def parse_doi(text: str | None) -> str | None:
    """The DOI in ``text`` (a resolver prefix such as ``https://doi.org/`` dropped), None when blank.

    Raises ``InvalidInput`` naming the ``doi`` field when it is not the syntax of a DOI."""
    value = (text or "").strip()
    if not value:
        return None
    for prefix in DOI_PREFIXES:
        if value.lower().startswith(prefix):
            value = value[len(prefix) :].strip()
            break
    if len(value) > 300 or not DOI_SYNTAX.fullmatch(value):
        raise InvalidInput(
            Message(N_("The DOI is not valid.")),
            errors={
                "doi": Message(
                    N_("A DOI looks like 10.1234/abc.567: “10.”, the registrant's number, a slash, a suffix.")
                )
            },
        )
    return value


def _parse_url(text: str | None) -> str | None:
    value = (text or "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or re.search(r"\s", value) or len(value) > URL_LENGTH:
        raise InvalidInput(
            Message(N_("The link is not valid.")), errors={"url": Message(N_("A web address starting with https://."))}
        )
    return value


def _parse_year(text: str | int | None, today: date) -> int:
    value = str(text if text is not None else "").strip()
    last = today.year + 1
    if not (value.isascii() and value.isdigit() and FIRST_YEAR <= int(value) <= last):
        raise InvalidInput(
            Message(N_("The year is not valid.")),
            errors={"year": Message(N_("A year from %(first)s to %(last)s."), first=str(FIRST_YEAR), last=str(last))},
        )
    return int(value)


def outputs_of(db: Session, actor: User, project: Project) -> list[ResearchOutput]:
    """The project's outputs, newest year first; for whoever may see the project."""
    require(db, actor, Action.VIEW_PROJECT, project)
    return list(
        db.exec(
            select(ResearchOutput)
            .where(ResearchOutput.project_id == project.id)
            .order_by(col(ResearchOutput.year).desc(), col(ResearchOutput.id).desc())
        )
    )


def add_output(
    db: Session,
    actor: User,
    project: Project,
    *,
    kind: str,
    citation: str,
    year: str | int | None,
    doi: str | None = None,
    url: str | None = None,
    today: date | None = None,
) -> ResearchOutput:
    """List an output of the project (its PI or a manager). Every wrong field is named at once."""
    require(db, actor, Action.EDIT_PROJECT, project)
    today = today or utcnow().date()
    errors: dict[str, str | Text] = {}
    values: dict[str, object] = {}
    if kind in set(OutputKind):
        values["kind"] = OutputKind(kind)
    else:
        errors["kind"] = Message(N_("Choose publication, dataset or software."))
    checks = {"doi": lambda: parse_doi(doi), "url": lambda: _parse_url(url), "year": lambda: _parse_year(year, today)}
    for name, check in checks.items():
        try:
            values[name] = check()
        except InvalidInput as exc:
            errors.update(exc.errors)
    text = (citation or "").strip()
    if not text:
        errors["citation"] = Message(N_("Give the citation (authors, title, venue or repository, year)."))
    elif len(text) > CITATION_LENGTH:
        errors["citation"] = Message(N_("At most %(limit)s characters."), limit=str(CITATION_LENGTH))
    if values.get("doi") and _doi_listed(db, project, str(values["doi"])):
        errors["doi"] = Message(N_("This project lists this DOI already."))
    if errors:
        raise InvalidInput(Message(N_("The output is not valid.")), errors=errors)
    output = ResearchOutput(project_id=project.id, citation=text, added_by_id=actor.id, **values)
    db.add(output)
    db.commit()
    return output


def _doi_listed(db: Session, project: Project, doi: str) -> bool:
    found = db.exec(
        select(ResearchOutput.id).where(
            ResearchOutput.project_id == project.id, func.lower(ResearchOutput.doi) == doi.lower()
        )
    ).first()
    return found is not None


def remove_output(db: Session, actor: User, project: Project, output_id: int) -> None:
    """Remove one of the project's outputs (its PI or a manager); another project's output is not found here."""
    require(db, actor, Action.EDIT_PROJECT, project)
    output = db.get(ResearchOutput, output_id)
    if output is None or output.project_id != project.id:
        raise NotFound(Message(N_("No such output.")))
    db.delete(output)
    db.commit()


# --- the reports an award owes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    report: ProgressReport
    application: Application
    project: Project
    state: str


def _state_order(state: str) -> int:
    return {"overdue": 0, "requested": 1, "submitted": 2}[state]


def reports_of_project(db: Session, actor: User, project: Project, today: date) -> list[ReportRow]:
    """The reports asked of the project, those still owed first."""
    require(db, actor, Action.VIEW_PROJECT, project)
    rows = db.exec(
        select(ProgressReport, Application)
        .join(Application, Application.id == ProgressReport.application_id)
        .where(Application.project_id == project.id)
        .order_by(ProgressReport.due_on, ProgressReport.id)
    ).all()
    found = [ReportRow(r, a, project, r.state(today)) for r, a in rows]
    return sorted(found, key=lambda row: _state_order(row.state))


def reports_of_call(db: Session, actor: User, call: Call, today: date) -> list[ReportRow]:
    """The reports asked of the call's awarded projects, for its manager: overdue first, then by due date."""
    require(db, actor, Action.MANAGE_CALL, call)
    rows = db.exec(
        select(ProgressReport, Application, Project)
        .join(Application, Application.id == ProgressReport.application_id)
        .join(Project, Project.id == Application.project_id)
        .where(Application.call_id == call.id)
        .order_by(ProgressReport.due_on, ProgressReport.id)
    ).all()
    found = [ReportRow(r, a, p, r.state(today)) for r, a, p in rows]
    return sorted(found, key=lambda row: _state_order(row.state))


def get_report(db: Session, actor: User, report_id: int) -> tuple[ProgressReport, Application, Call, Project]:
    """A report its project's members and its call's manager may read; anyone else learns nothing of it."""
    report = db.get(ProgressReport, report_id)
    if report is None:
        raise NotFound(Message(N_("No such report.")))
    application = db.get(Application, report.application_id)
    assert application is not None
    call, project = db.get(Call, application.call_id), db.get(Project, application.project_id)
    assert call is not None and project is not None
    if project_role(db, actor, project) is None and not allowed(db, actor, Action.MANAGE_CALL, call):
        raise NotFound(Message(N_("No such report.")))
    return report, application, call, project


def may_edit(db: Session, actor: User, project: Project) -> bool:
    """Whether ``actor`` may list and remove the project's outputs and write its reports (its PI or a manager)."""
    return allowed(db, actor, Action.EDIT_PROJECT, project)


def submit_report(
    db: Session, settings: Settings, actor: User, report: ProgressReport, *, text: str, now: datetime | None = None
) -> ProgressReport:
    """Submit the report's text (the PI or a manager of the project), once; the call's manager is told."""
    application = db.get(Application, report.application_id)
    assert application is not None
    project, call = db.get(Project, application.project_id), db.get(Call, application.call_id)
    assert project is not None and call is not None
    require(db, actor, Action.EDIT_PROJECT, project)
    if report.submitted_at is not None:
        raise Conflict(Message(N_("This report is submitted already.")))
    body = (text or "").strip()
    if not body:
        raise InvalidInput(Message(N_("Write the report.")), errors={"text": Message(N_("Required."))})
    if len(body) > REPORT_LENGTH:
        raise InvalidInput(
            Message(N_("The report is too long.")),
            errors={"text": Message(N_("At most %(limit)s characters."), limit=str(REPORT_LENGTH))},
        )
    claimed = db.execute(
        sa.update(ProgressReport.__table__)
        .where(ProgressReport.__table__.c.id == report.id, ProgressReport.__table__.c.submitted_at.is_(None))
        .values(submitted_at=now or utcnow(), submitted_by_id=actor.id, text=body)
    )
    if claimed.rowcount != 1:
        db.rollback()
        raise Conflict(Message(N_("This report is submitted already.")))
    manager = db.get(User, call.manager_id)
    if manager is not None:
        notify(
            db,
            settings,
            manager,
            subject=Message(_SUBMITTED_SUBJECT[report.kind], title=application.title),
            body=Message(
                _SUBMITTED[report.kind],
                who=actor.display_name,
                title=application.title,
                project=project.title,
                call=call.title,
            ),
            link=f"/progress-reports/{report.id}",
        )
    db.commit()
    db.refresh(report)
    return report


@dataclass(frozen=True)
class AwardPeriod:
    """When an accepted application's allocations run (they share their dates)."""

    application_id: int
    title: str
    project_id: int
    starts_at: datetime
    ends_at: datetime

    @property
    def midpoint(self) -> datetime:
        return self.starts_at + (self.ends_at - self.starts_at) / 2


def _award_periods(*conditions: Any) -> sa.Select:
    """Accepted applications with the dates their allocations run, narrowed by ``conditions``."""
    return (
        select(
            Application.id,
            Application.title,
            Application.project_id,
            func.min(Allocation.starts_at),
            func.max(Allocation.ends_at),
        )
        .join(Award, Award.application_id == Application.id)
        .join(Allocation, Allocation.id == Award.allocation_id)
        .where(Application.state == ApplicationState.ACCEPTED, Award.tranche == 1, *conditions)
        .group_by(Application.id, Application.title, Application.project_id)
    )


def report_warnings(
    db: Session, project: Project, call: Call, *, today: date, exclude_application_id: int | None = None
) -> list[Text]:
    """What a new application of ``project`` to ``call`` should be warned of: an earlier award of the same call
    whose final report is missing (its allocations ended and none was submitted) or any of whose reports is
    overdue. A warning, not a refusal: the call's manager decides. Each is a sentence in the reader's language."""
    conditions = [Application.project_id == project.id, Application.call_id == call.id]
    if exclude_application_id is not None:
        conditions.append(Application.id != exclude_application_id)
    rows = db.exec(_award_periods(*conditions)).all()
    if not rows:
        return []
    periods = [AwardPeriod(*row) for row in rows]
    reports: dict[int, dict[ReportKind, ProgressReport]] = defaultdict(dict)
    for report in db.exec(
        select(ProgressReport).where(col(ProgressReport.application_id).in_([p.application_id for p in periods]))
    ):
        reports[report.application_id][report.kind] = report
    warnings: list[Text] = []
    for period in sorted(periods, key=lambda p: p.application_id):
        owed = reports[period.application_id]
        progress = owed.get(ReportKind.PROGRESS)
        if progress is not None and progress.state(today) == "overdue":
            warnings.append(
                Message(
                    N_("The progress report on “%(title)s” was due on %(due)s and is not submitted."),
                    title=period.title,
                    due=progress.due_on,
                )
            )
        final = owed.get(ReportKind.FINAL)
        if final is not None and final.state(today) == "overdue":
            warnings.append(
                Message(
                    N_("The final report on “%(title)s” was due on %(due)s and is not submitted."),
                    title=period.title,
                    due=final.due_on,
                )
            )
        elif period.ends_at.date() <= today and (final is None or final.submitted_at is None):
            warnings.append(
                Message(
                    N_("The final report on “%(title)s” is missing: its allocations ended on %(ended)s."),
                    title=period.title,
                    ended=period.ends_at.date(),
                )
            )
    return warnings


def _pi_of(db: Session, project_id: int) -> User | None:
    return db.exec(
        select(User)
        .join(ProjectMembership, ProjectMembership.user_id == User.id)
        .where(ProjectMembership.project_id == project_id, ProjectMembership.role == ProjectRole.PI)
    ).first()


def _ask_for(
    db: Session, settings: Settings, period: AwardPeriod, kind: ReportKind, due_on: date, now: datetime
) -> bool:
    """Create the report (once: the unique key refuses a second, from this round or a concurrent one) and tell
    the PI; a report asked late, already close to due or overdue, counts as reminded or told."""
    today = now.date()
    report = ProgressReport(
        application_id=period.application_id,
        kind=kind,
        due_on=due_on,
        requested_at=now,
        reminded_at=now if due_on - timedelta(days=settings.report_reminder_days) <= today else None,
        overdue_notified_at=now if due_on < today else None,
    )
    db.add(report)
    try:
        db.flush()
    except IntegrityError:
        db.rollback()
        return False
    pi = _pi_of(db, period.project_id)
    if pi is not None:
        notify(
            db,
            settings,
            pi,
            subject=Message(_REQUESTED_SUBJECT[kind], title=period.title),
            body=Message(_REQUESTED[kind], title=period.title, due=due_on)
            + Message(N_("List publications, data sets and software under Outputs on the project page.")),
            link=f"/progress-reports/{report.id}",
        )
    db.commit()
    return True


def request_award_reports(db: Session, settings: Settings, *, now: datetime | None = None) -> int:
    """Ask for the reports that are due to be asked for at ``now``; returns how many were asked.

    Idempotent: a report exists once per application and kind, so a second run (or a second worker) asks
    nothing. An award whose end has passed is asked only for its final report."""
    now = now or utcnow()
    has_final = (
        select(ProgressReport.id)
        .where(ProgressReport.application_id == Application.id, ProgressReport.kind == ReportKind.FINAL)
        .exists()
    )
    rows = db.exec(_award_periods(col(Allocation.starts_at) <= now, ~has_final)).all()
    periods = [AwardPeriod(*row) for row in rows]
    asked = {
        (a, k)
        for a, k in db.exec(
            select(ProgressReport.application_id, ProgressReport.kind).where(
                col(ProgressReport.application_id).in_([p.application_id for p in periods])
            )
        ).all()
    }
    db.rollback()
    count = 0
    for period in periods:
        if period.ends_at <= now:
            due = period.ends_at.date() + timedelta(days=settings.final_report_due_days)
            count += _ask_for(db, settings, period, ReportKind.FINAL, due, now)
        elif period.midpoint <= now and (period.application_id, ReportKind.PROGRESS) not in asked:
            due = period.midpoint.date() + timedelta(days=settings.progress_report_due_days)
            count += _ask_for(db, settings, period, ReportKind.PROGRESS, due, now)
    return count


def _claim(db: Session, report_id: int, column: str, now: datetime) -> bool:
    """Mark a notice as sent before sending it, so that two workers never both send it."""
    table = ProgressReport.__table__
    claimed = db.execute(
        sa.update(table)
        .where(table.c.id == report_id, table.c[column].is_(None), table.c.submitted_at.is_(None))
        .values({column: now})
    )
    if claimed.rowcount != 1:
        db.rollback()
        return False
    return True


def remind_award_reports(db: Session, settings: Settings, *, now: datetime | None = None) -> int:
    """Remind the PI once when a report is due within ``report_reminder_days``, and tell them once when it is
    overdue; returns how many notices were sent."""
    now = now or utcnow()
    today = now.date()
    horizon = today + timedelta(days=settings.report_reminder_days)
    owed = db.exec(
        select(ProgressReport, Application)
        .join(Application, Application.id == ProgressReport.application_id)
        .where(
            col(ProgressReport.submitted_at).is_(None),
            sa.or_(
                sa.and_(
                    col(ProgressReport.reminded_at).is_(None),
                    col(ProgressReport.due_on) <= horizon,
                    col(ProgressReport.due_on) >= today,
                ),
                sa.and_(col(ProgressReport.overdue_notified_at).is_(None), col(ProgressReport.due_on) < today),
            ),
        )
        .order_by(ProgressReport.id)
    ).all()
    db.rollback()
    sent = 0
    for report, application in owed:
        late = report.due_on < today
        if not _claim(db, report.id, "overdue_notified_at" if late else "reminded_at", now):
            continue
        pi = _pi_of(db, application.project_id)
        if pi is not None:
            notify(
                db,
                settings,
                pi,
                subject=Message(_REMINDER_SUBJECT[report.kind, late], title=application.title),
                body=Message(_REMINDER[report.kind, late], title=application.title, due=report.due_on)
                + (
                    Message(
                        N_(
                            "The call's manager sees it as overdue, and a new application to the same call is "
                            "flagged until it is submitted."
                        )
                    )
                    if late
                    else None
                ),
                link=f"/progress-reports/{report.id}",
            )
        db.commit()
        sent += 1
    return sent
