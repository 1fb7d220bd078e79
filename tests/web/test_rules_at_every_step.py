"""Every rule holds at every step (issue 19 and issue 15's access bullets): the level of assurance of the login
that submits, a reviewer's declared conflict of interest, site operators' scope, an award's tranches and
capacity, call dates in people's words, and a course's hours against every running notebook."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from types import SimpleNamespace

import pytest
import time_machine
from sqlmodel import Session, select

from portal.authz import Action, AssuranceTooLow, allowed, require_level
from portal.classroom import services as classroom
from portal.compute.services import SpawnRefused, check_spawn, hub_username
from portal.config import AssuranceLevel, Settings
from portal.errors import NotFound
from portal.grants import services as grants
from portal.grants.models import Application, ApplicationState, Award, ReviewKind, ReviewMode
from portal.identity.models import ExternalIdentity, FactoryRole
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, ResourceKind
from portal.projects.models import Organisation, ProjectMembership, ProjectRole
from portal.reports.models import OperatorSite
from tests.classroom.test_classroom import (
    Classroom,
    enrol,
    fresh,
    open_course,
    room,  # noqa: F401  (a fixture)
    run_for,
    spawn_as,
)
from tests.conftest import EIDAS, post_form
from tests.grants.test_grants_pages import (
    PDF,
    draft,
    g,  # noqa: F401  (a fixture)
    reload,
    text,
)
from tests.grants_world import complete_draft, login_of, make_grant_world, staff
from tests.ledger_world import HOUR, person

SETTINGS = Settings(env="test", mail_backend="log")

# --- the level of assurance of the login that performs the step ---------------------------------------------


def test_a_draft_started_at_substantial_is_not_submitted_from_a_later_login_at_low(
    g,  # noqa: F811
    db: Session,
    login,
) -> None:
    application = draft(db, g)  # started with a login at substantial
    subject = db.exec(select(ExternalIdentity.subject).where(ExternalIdentity.user_id == g.pi.id)).one()
    low_client = g.app.test_client()
    again = login(low_client, subject, acr=EIDAS + "low", given_name="Paula", family_name="Pietarinen")
    assert again.id == g.pi.id  # the same person, a weaker login
    a = f"/applications/{application.id}"
    refused = post_form(low_client, f"{a}/submit", page=f"{a}/edit")
    assert refused.status_code == 409
    assert "To submit as PI, log in with your institution" in text(refused)
    assert "this login is at level low" in text(refused)
    assert reload(db, application).state == ApplicationState.DRAFT
    # the login at substantial submits it
    assert post_form(g.pi_client, f"{a}/submit", page=f"{a}/edit").status_code == 302
    assert reload(db, application).state == ApplicationState.SUBMITTED


def test_the_shared_level_check_names_the_step_and_the_logins_level() -> None:
    user = SimpleNamespace(id=1)
    require_level(login_of(user, level=AssuranceLevel.HIGH), AssuranceLevel.SUBSTANTIAL, to="pay")
    with pytest.raises(AssuranceTooLow, match=r"To buy for an organisation, log in at level substantial .* level low"):
        require_level(
            login_of(user, level=AssuranceLevel.LOW), AssuranceLevel.SUBSTANTIAL, to="buy for an organisation"
        )
    with pytest.raises(AssuranceTooLow, match="no login"):
        require_level(None, AssuranceLevel.SUBSTANTIAL, to="pay")


# --- conflicts of interest and site operators' scope ------------------------------------------------------------


def test_a_reviewer_who_declared_a_conflict_no_longer_reads_the_application_or_its_pdf(
    g,  # noqa: F811
    db: Session,
    login,
) -> None:
    application = draft(db, g)
    upload = grants.upload_pdf(db, g.pi, application, question_key="plan", filename="plan.pdf", content=PDF)
    grants.submit(db, g.settings, g.pi, login_of(g.pi), application)
    grants.administrative_check(db, g.settings, g.manager, application, passed=True)
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    tech = grants.assign_reviewer(db, g.settings, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, tech.id, comment_to_applicant="Fine.", feasible=True)
    grants.complete_technical_assessment(db, g.settings, g.manager, application)
    reviewer_client = g.app.test_client()
    reviewer = login(reviewer_client, given_name="Rita", family_name="Reviewer")
    from portal.identity.services import grant_role

    grant_role(db, None, reviewer, FactoryRole.REVIEWER, reason="test setup")
    review = grants.assign_reviewer(db, g.settings, g.manager, application, reviewer, kind=ReviewKind.SCIENTIFIC)
    assert reviewer_client.get(f"/files/{upload.id}").status_code == 200  # assigned: the reviewer reads it

    grants.declare_conflict(db, reviewer, review.id, reason="I co-authored with the PI.")
    for path in (f"/reviews/{review.id}", f"/applications/{application.id}", f"/files/{upload.id}"):
        assert reviewer_client.get(path).status_code == 404, path
    with pytest.raises(NotFound):
        grants.get_file(db, reviewer, upload.id)


def test_a_site_operator_sees_projects_only_at_assigned_sites_and_applications_only_through_a_review(
    db: Session,
) -> None:
    gw = make_grant_world(db)
    application = complete_draft(db, gw)  # a draft of a project with no allocation yet
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    assert not allowed(db, operator, Action.VIEW_PROJECT, gw.project)
    with pytest.raises(NotFound):
        grants.get_application(db, operator, application.id)
    # an allocation at a site assigned to the operator makes the project (not its drafts) visible to them
    ledger.open_allocation(
        db,
        None,
        project=gw.project,
        resource=gw.ledger.gpu,
        amount=HOUR,
        starts_at=datetime.combine(date.today(), time.min, tzinfo=UTC),
        ends_at=datetime.combine(date.today() + timedelta(days=30), time.min, tzinfo=UTC),
        source=ledger.AllocationSource.ADMIN,
        title="Earlier award",
    )
    assert not allowed(db, operator, Action.VIEW_PROJECT, gw.project)  # not their site yet
    db.add(OperatorSite(user_id=operator.id, site_id=gw.ledger.site.id))
    db.commit()
    assert allowed(db, operator, Action.VIEW_PROJECT, gw.project)
    assert allowed(db, operator, Action.VIEW_ORGANISATION, db.get(Organisation, gw.project.organisation_id))
    with pytest.raises(NotFound):
        grants.get_application(db, operator, application.id)


# --- tranches ---------------------------------------------------------------------------------------------------


def _ranked(db: Session, gw, hours: int) -> Application:
    application = complete_draft(db, gw, hours=hours)
    grants.submit(db, SETTINGS, gw.pi, login_of(gw.pi), application)
    grants.administrative_check(db, SETTINGS, gw.manager, application, passed=True)
    operator = staff(db, FactoryRole.SITE_OPERATOR, f"Operator {application.id}")
    tech = grants.assign_reviewer(db, SETTINGS, gw.manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, tech.id, comment_to_applicant="Fine.", feasible=True)
    grants.complete_technical_assessment(db, SETTINGS, gw.manager, application)
    return application


def test_the_second_tranches_capacity_is_held_by_the_decision_so_its_release_never_fails(db: Session) -> None:
    gw = make_grant_world(db, mode=ReviewMode.TECHNICAL, capacity_hours=300, budget_hours=1000)
    quarter = ledger.quarter_of(ledger.quarter_of(date.today())[1])[0]  # awards over exactly next quarter
    first = _ranked(db, gw, 200)
    grants.decide_accept(
        db,
        SETTINGS,
        gw.manager,
        first,
        awarded={gw.ledger.gpu.id: 200 * HOUR},
        first_tranche_percent=50,
        starts_on=quarter,
    )
    allocation = db.exec(select(Allocation).where(Allocation.project_id == gw.project.id)).one()
    assert (allocation.balance, allocation.reserved) == (100 * HOUR, 200 * HOUR)

    # a later award cannot take the capacity the second tranche holds: it is refused, nothing changes
    second = _ranked(db, gw, 150)
    with pytest.raises(ledger.CapacityExhausted):
        grants.decide_accept(
            db, SETTINGS, gw.manager, second, awarded={gw.ledger.gpu.id: 150 * HOUR}, starts_on=quarter
        )
    assert reload(db, second).state == ApplicationState.RANKED
    # ... nor can one whose own later tranche would not fit, however small its first
    with pytest.raises(ledger.CapacityExhausted):
        grants.decide_accept(
            db,
            SETTINGS,
            gw.manager,
            second,
            awarded={gw.ledger.gpu.id: 150 * HOUR},
            first_tranche_percent=10,
            starts_on=quarter,
        )
    grants.decide_accept(db, SETTINGS, gw.manager, second, awarded={gw.ledger.gpu.id: 100 * HOUR}, starts_on=quarter)

    tranche = db.exec(select(Award).where(Award.application_id == first.id, Award.tranche == 2)).one()
    grants.release_tranche(db, SETTINGS, gw.manager, tranche.id)
    allocation = fresh(db, allocation)
    assert (allocation.balance, allocation.reserved) == (200 * HOUR, 200 * HOUR)
    assert ledger.balance_mismatches(db) == []


# --- call dates in people's words ---------------------------------------------------------------------------------


def _warsaw(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=grants.CALL_TIME_ZONE).astimezone(UTC)


def test_a_call_closing_on_a_day_takes_submissions_until_that_days_end_in_warsaw(db: Session) -> None:
    closing = date(2030, 3, 20)
    with time_machine.travel(_warsaw(date(2030, 3, 1), 12), tick=False) as clock:
        gw = make_grant_world(db)
        gw.call.closes_at = grants.end_of_day(closing)  # what "Closes on 2030-03-20" in the form stores
        gw.call.first_cutoff = closing
        db.add(gw.call)
        db.commit()
        assert grants.closing_day(gw.call) == closing
        early, late = complete_draft(db, gw), complete_draft(db, gw)
        clock.move_to(_warsaw(closing, 23, 59))  # 22:59 UTC: the last minute of the closing day in Warsaw
        assert grants.accepting(gw.call, grants.utcnow())
        assert grants.next_cutoff(gw.call, grants.utcnow()) == closing
        grants.submit(db, SETTINGS, gw.pi, login_of(gw.pi), early)
        clock.move_to(_warsaw(closing + timedelta(days=1), 0, 1))  # still the 20th in UTC, the 21st in Warsaw
        assert not grants.accepting(gw.call, grants.utcnow())
        with pytest.raises(grants.NotEligible, match="closed"):
            grants.submit(db, SETTINGS, gw.pi, login_of(gw.pi), late)
    assert reload(db, early).state == ApplicationState.SUBMITTED
    assert reload(db, late).state == ApplicationState.DRAFT


def test_a_call_whose_only_cut_off_has_passed_takes_no_more_submissions_and_says_so(
    g,  # noqa: F811
    db: Session,
) -> None:
    application = draft(db, g)
    g.call.first_cutoff = grants.local_day(grants.utcnow()) - timedelta(days=1)
    g.call.cutoff_every_days = None
    db.add(g.call)
    db.commit()
    page = text(g.pi_client.get(f"/calls/{g.call.id}"))
    assert "no further cut-off: this call takes no more applications" in page
    assert "This call does not take applications now." in page
    assert "Europe/Warsaw time" in page
    a = f"/applications/{application.id}"
    refused = post_form(g.pi_client, f"{a}/submit", page=f"{a}/edit")
    assert refused.status_code == 409 and "last cut-off has passed" in text(refused)
    assert reload(db, application).state == ApplicationState.DRAFT
    assert g.call.id not in {c.id for c in grants.open_calls(db)}


# --- courses: the teacher's project, and the course's hours against every running notebook ---------------------------


def test_a_member_of_the_teachers_project_neither_joins_the_course_nor_computes_on_it(
    db: Session,
    settings: Settings,
    room: Classroom,  # noqa: F811
) -> None:
    course = open_course(db, settings, room)
    colleague = person(db, "Colleague")
    db.add(ProjectMembership(project_id=room.world.project.id, user_id=colleague.id, role=ProjectRole.MEMBER))
    db.commit()
    with pytest.raises(classroom.NotEligibleForCourse, match="member of the project that funds"):
        classroom.join_course(db, colleague, None, course.join_code)
    # a student who joins the teacher's project later is refused at the spawn check
    student, seat = enrol(db, course)
    db.add(ProjectMembership(project_id=room.world.project.id, user_id=student.id, role=ProjectRole.MEMBER))
    db.commit()
    refusal = classroom.course_spawn_refusal(db, course, seat, HOUR, per_second=2, kind=ResourceKind.CPU)
    assert refusal is not None and "member of the project that funds" in refusal
    db.rollback()


def test_a_newcomers_spawn_is_checked_against_what_the_course_holds_after_running_notebooks(
    db: Session,
    settings: Settings,
    room: Classroom,  # noqa: F811
) -> None:
    course = open_course(db, settings, room, student_cap=10 * HOUR, max_seats=2)  # 20 core-hours in the course
    first, _ = enrol(db, course, "First")
    second, second_seat = enrol(db, course, "Second")
    # the teacher gives back what they can (the course's hours are not all promised)... but the course is
    # left with less than the caps: an admin's correction took 12 core-hours
    admin = staff(db, FactoryRole.ADMIN, "Admin")
    ledger.adjust(db, admin, course.allocation_id, -12 * HOUR, reason="test: the course holds less than its caps")
    spawn_as(db, settings, first, course, hours=3)  # 6 core-hours promised of the 8 left
    refusal = classroom.course_spawn_refusal(db, course, second_seat, 4 * HOUR, per_second=2, kind=ResourceKind.CPU)
    assert refusal is not None and "has 2.0 core-hours left for notebooks" in refusal and "at most 1 hours" in refusal
    db.rollback()
    fits = classroom.course_spawn_refusal(db, course, second_seat, 2 * HOUR, per_second=2, kind=ResourceKind.CPU)
    assert fits is None
    db.rollback()
    assert classroom.course_hours_promised(db, course) == 6 * HOUR
    # through the hub's spawn check: the second student's cap allows 5 hours, the course only 1
    with pytest.raises(SpawnRefused, match="ask for at most 1 hours"):
        check_spawn(
            db, settings, hub_username(second), "n1", {"allocation": course.allocation_id, "profile": "cpu", "hours": 2}
        )
    assert (
        check_spawn(
            db, settings, hub_username(second), "n1", {"allocation": course.allocation_id, "profile": "cpu", "hours": 1}
        ).max_seconds
        == HOUR
    )


def test_a_removal_while_a_notebook_runs_and_the_hub_cannot_stop_it_keeps_the_seat_until_nothing_more_is_charged(
    db: Session,
    settings: Settings,
    room: Classroom,  # noqa: F811
) -> None:
    from portal.compute.launch import meter_notebooks
    from tests.classroom.test_classroom import HubThatCannotStop, up

    course = open_course(db, settings, room, max_seats=1)  # 10 core-hours
    student, seat = enrol(db, course)
    session = spawn_as(db, settings, student, course, hours=1).session
    run_for(db, session, 60)
    assert classroom.remove_student(db, room.world.pi, course, seat.id).waiting
    session = fresh(db, session)
    hub = HubThatCannotStop([up(session)])
    meter_notebooks(db, settings, hub, session.started_at + timedelta(minutes=30))
    assert classroom.settle_removed_students(db, settings) == 0  # the notebook may still be charged
    meter_notebooks(db, settings, hub, session.started_at + timedelta(hours=2))
    assert fresh(db, seat).used == 7200  # charged to its time limit; nothing more can land
    assert classroom.settle_removed_students(db, settings) == 1
    share = db.get(Allocation, course.allocation_id)
    assert share is not None and share.balance == 10 * HOUR  # the newcomer's cap is covered in full
    assert fresh(db, room.parent).balance == 1000 * HOUR - 10 * HOUR - 7200
    assert ledger.balance_mismatches(db) == []
