"""Research outputs and the reports an award owes: DOI syntax, who may list and remove outputs, the worker asking
for progress and final reports at set points (idempotent, with reminders and overdue notices), the call manager
seeing overdue reports, the warning on a new application to the same call, and the operators' counts of outputs
per call, site and country."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
from flask import Flask
from sqlmodel import Session, select

from portal import formatting
from portal.errors import InvalidInput, NotAuthorised, NotFound
from portal.grants import outputs
from portal.grants import services as grants
from portal.grants.models import (
    Application,
    ApplicationState,
    OutputKind,
    ProgressReport,
    ReportKind,
    ResearchOutput,
    ReviewKind,
    ReviewMode,
)
from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.ledger.models import Allocation
from portal.notifications.models import Notification
from portal.projects import services as projects
from portal.projects.models import Project
from portal.reports import services as reports
from portal.worker import JOBS
from tests.conftest import post_form
from tests.grants_world import login_of, mail_settings, make_call, plan_capacity_from_today, staff
from tests.ledger.test_ledger_postgres import all_at_once, engine  # noqa: F401  (the migrated PostgreSQL engine)
from tests.ledger_world import HOUR, make_world, person

SETTINGS = mail_settings()


def text(response) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


# --- building awards through the services ------------------------------------------------------------------------


def award(db: Session, w: SimpleNamespace, project: Project, pi: User, *, starts_on: date | None = None, hours=100):
    """An application of ``project`` to the Fast Lane call, through the technical assessment, accepted."""
    application = grants.start_application(
        db, pi, login_of(pi), call=w.call, project=project, title=f"{project.title} run"
    )
    grants.save_draft(
        db,
        pi,
        application,
        abstract="Train models.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(w.gpu.id, hours * HOUR, "Training")],
    )
    grants.submit(db, SETTINGS, pi, login_of(pi), application)
    grants.administrative_check(db, SETTINGS, w.manager, application, passed=True)
    review = grants.assign_reviewer(db, SETTINGS, w.manager, application, w.operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, w.operator, review.id, comment_to_applicant="Feasible.", feasible=True)
    grants.complete_technical_assessment(db, SETTINGS, w.manager, application)
    grants.decide_accept(db, SETTINGS, w.manager, application, awarded={w.gpu.id: hours * HOUR}, starts_on=starts_on)
    assert application.state == ApplicationState.ACCEPTED
    return application


def period_of(db: Session, application: Application) -> tuple[datetime, datetime]:
    allocation = db.exec(select(Allocation).where(Allocation.project_id == application.project_id)).first()
    assert allocation is not None
    return allocation.starts_at, allocation.ends_at


def past_quarter() -> date:
    """The first day of the quarter three quarters before today's: an award that ran then has long ended."""
    start, _end = ledger.quarter_of(date.today())
    for _ in range(3):
        start, _end = ledger.quarter_of(start - timedelta(days=1))
    return start


def build(db: Session, *, past_capacity: bool = False) -> SimpleNamespace:
    """A Fast Lane call (3-month awards) at a site with capacity from today, a PI with a Lithuanian university
    project, its call manager and a site operator for the technical review."""
    world = make_world(db)
    plan_capacity_from_today(db, world.gpu)
    if past_capacity:
        start = past_quarter()
        end = ledger.quarter_of(start)[1]
        ledger.set_capacity(db, None, world.gpu, starts_on=start, ends_on=end, capacity=10_000 * HOUR, reason="test")
    manager = person(db, "Manager")
    call = make_call(db, world.gpu.id, manager, mode=ReviewMode.TECHNICAL, title="Fast Lane outputs call")
    pi = person(db, "Paula")
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    return SimpleNamespace(
        world=world, gpu=world.gpu, site=world.site, call=call, manager=manager, pi=pi, org=org, project=project,
        operator=operator,
    )  # fmt: skip


def project_in(db: Session, pi: User, organisation: str, country: str, title: str) -> Project:
    org = projects.create_organisation(db, pi, name=organisation, kind="university", country=country)
    return projects.create_project(db, pi, org, title=title)


def member_of(db: Session, project: Project, pi: User, role: str, name: str) -> User:
    user = person(db, name)
    _invitation, link = projects.invite_member(db, SETTINGS, pi, project, email=user.email or "", role=role)
    projects.accept_invitation(db, user, link.rsplit("/", 1)[1])
    return user


# --- DOI syntax ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entered", "kept"),
    [
        ("10.1000/182", "10.1000/182"),
        ("10.5281/zenodo.1234567", "10.5281/zenodo.1234567"),
        ("  10.1038/NPHYS1170  ", "10.1038/NPHYS1170"),
        ("https://doi.org/10.1038/nphys1170", "10.1038/nphys1170"),
        ("doi:10.1000.10/ABC(1)", "10.1000.10/ABC(1)"),
        ("https://dx.doi.org/10.1002/(SICI)1097-4636(199706)35:4<517::AID-JBM13>3.0.CO;2-K",
         "10.1002/(SICI)1097-4636(199706)35:4<517::AID-JBM13>3.0.CO;2-K"),
        ("10.48550/arXiv.2303.08774", "10.48550/arXiv.2303.08774"),
        ("", None),
        ("   ", None),
    ],
)  # fmt: skip
def test_a_doi_is_kept_as_entered_when_it_has_the_handbooks_syntax(entered, kept):
    assert outputs.parse_doi(entered) == kept


@pytest.mark.parametrize(
    "entered",
    ["10.12/abc", "11.1000/abc", "10.1000", "10.1000/", "10.1000/has space", "10.abcd/x", "1000/abc", "doi:",
     "https://example.org/10.1000/182", "10.1000/line\nbreak"],
)  # fmt: skip
def test_a_doi_without_the_handbooks_syntax_is_refused_naming_the_field(entered):
    with pytest.raises(InvalidInput) as refused:
        outputs.parse_doi(entered)
    assert set(refused.value.errors) == {"doi"}
    assert "10.1234/abc.567" in refused.value.errors["doi"]


def test_an_output_is_stored_as_entered_and_every_wrong_field_is_named(db):
    w = build(db)
    with pytest.raises(InvalidInput) as refused:
        outputs.add_output(db, w.pi, w.project, kind="poster", citation=" ", year="20x6", doi="10.1/x", url="ftp://x")
    assert set(refused.value.errors) == {"kind", "citation", "year", "doi", "url"}
    citation = "Pietarinen P. et al. Speech models for Baltic languages. Interspeech, 2026."
    output = outputs.add_output(
        db,
        w.pi,
        w.project,
        kind="publication",
        citation=f"  {citation}\n",
        year="2026",
        doi="10.21437/Interspeech.2026-1",
    )
    stored = db.get(ResearchOutput, output.id)
    assert (stored.kind, stored.citation, stored.doi, stored.year, stored.added_by_id) == (
        OutputKind.PUBLICATION, citation, "10.21437/Interspeech.2026-1", 2026, w.pi.id,
    )  # fmt: skip
    with pytest.raises(InvalidInput) as twice:
        outputs.add_output(
            db, w.pi, w.project, kind="dataset", citation="Same", year=2026, doi="10.21437/INTERSPEECH.2026-1"
        )
    assert twice.value.errors == {"doi": "This project lists this DOI already."}
    with pytest.raises(InvalidInput) as future:
        outputs.add_output(db, w.pi, w.project, kind="dataset", citation="Later", year=date.today().year + 2)
    assert set(future.value.errors) == {"year"}


# --- who may list and remove outputs ---------------------------------------------------------------------------------


def test_only_the_pi_and_managers_edit_outputs_and_other_projects_members_learn_nothing(db):
    w = build(db)
    manager = member_of(db, w.project, w.pi, "manager", "Mara")
    member = member_of(db, w.project, w.pi, "member", "Mikk")
    stranger = person(db, "Stranger")
    org = projects.create_organisation(db, stranger, name="Tartu Uni", kind="university", country="EE")
    other = projects.create_project(db, stranger, org, title="Estonian vision")
    output = outputs.add_output(db, manager, w.project, kind="dataset", citation="Baltic speech corpus", year=2026)
    assert [o.id for o in outputs.outputs_of(db, member, w.project)] == [output.id]
    with pytest.raises(NotAuthorised):
        outputs.add_output(db, member, w.project, kind="software", citation="asr-tools", year=2026)
    with pytest.raises(NotAuthorised):
        outputs.remove_output(db, member, w.project, output.id)
    with pytest.raises(NotFound):
        outputs.outputs_of(db, stranger, w.project)
    with pytest.raises(NotFound):
        outputs.add_output(db, stranger, w.project, kind="software", citation="asr-tools", year=2026)
    with pytest.raises(NotFound):  # through a project of their own: the output is not theirs
        outputs.remove_output(db, stranger, other, output.id)
    assert db.get(ResearchOutput, output.id) is not None
    outputs.remove_output(db, w.pi, w.project, output.id)
    assert db.get(ResearchOutput, output.id) is None


@pytest.fixture
def pages(app: Flask, db: Session, login, client):
    """``build`` with the PI, a plain member and another project's PI logged in through the OIDC provider."""
    w = build(db)
    pi = login(client, given_name="Paula")
    org = projects.create_organisation(db, pi, name="Kaunas Uni", kind="university", country="LT")
    w.project = projects.create_project(db, pi, org, title="Lithuanian speech")
    w.pi, w.pi_client = pi, client
    w.member_client = app.test_client()
    member = login(w.member_client, given_name="Mikk")
    _inv, link = projects.invite_member(db, SETTINGS, pi, w.project, email=member.email or "", role="member")
    projects.accept_invitation(db, member, link.rsplit("/", 1)[1])
    w.stranger_client = app.test_client()
    stranger = login(w.stranger_client, given_name="Sten")
    other_org = projects.create_organisation(db, stranger, name="Tartu Uni", kind="university", country="EE")
    w.other = projects.create_project(db, stranger, other_org, title="Estonian vision")
    return w


def test_the_project_page_lists_outputs_and_a_bad_doi_is_named_next_to_its_field(pages, db):
    w = pages
    page = f"/projects/{w.project.id}"
    assert "No output is listed yet." in text(w.pi_client.get(page))
    bad = post_form(
        w.pi_client,
        f"/projects/{w.project.id}/outputs",
        {"kind": "publication", "citation": "P. Pietarinen. ASR. 2026.", "doi": "10.12/short", "year": "2026"},
        page=page,
    )
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert 'id="output-doi-error"' in html and "A DOI looks like 10.1234/abc.567" in html
    assert 'aria-invalid="true"' in html and "P. Pietarinen. ASR. 2026." in html  # what was typed stays
    assert db.exec(select(ResearchOutput).where(ResearchOutput.project_id == w.project.id)).first() is None

    no_token = w.pi_client.post(f"/projects/{w.project.id}/outputs", data={"kind": "dataset", "citation": "x"})
    assert no_token.status_code == 400

    good = post_form(
        w.pi_client,
        f"/projects/{w.project.id}/outputs",
        {"kind": "publication", "citation": "P. Pietarinen. ASR. 2026.", "doi": "https://doi.org/10.5281/zenodo.42",
         "url": "https://example.org/asr", "year": "2026"},
        page=page,
    )  # fmt: skip
    assert good.status_code == 302 and good.headers["Location"].endswith(f"/projects/{w.project.id}#outputs")
    shown = text(w.pi_client.get(page))
    assert "P. Pietarinen. ASR. 2026." in shown
    assert 'href="https://doi.org/10.5281/zenodo.42"' in shown
    output = db.exec(select(ResearchOutput).where(ResearchOutput.project_id == w.project.id)).one()

    member_view = text(w.member_client.get(page))
    assert "P. Pietarinen. ASR. 2026." in member_view and "List an output" not in member_view
    refused = post_form(
        w.member_client,
        f"/projects/{w.project.id}/outputs/{output.id}/remove",
        page=page,
    )
    assert refused.status_code == 403
    hidden = post_form(
        w.stranger_client, f"/projects/{w.project.id}/outputs/{output.id}/remove", page=f"/projects/{w.other.id}"
    )
    assert hidden.status_code == 404
    through_own = post_form(
        w.stranger_client, f"/projects/{w.other.id}/outputs/{output.id}/remove", page=f"/projects/{w.other.id}"
    )
    assert through_own.status_code == 404
    assert w.stranger_client.get(f"/projects/{w.project.id}/outputs/new").status_code == 404
    assert w.member_client.get(f"/projects/{w.project.id}/outputs/new").status_code == 403
    assert db.get(ResearchOutput, output.id) is not None

    removed = post_form(w.pi_client, f"/projects/{w.project.id}/outputs/{output.id}/remove", page=page)
    assert removed.status_code == 302
    assert db.exec(select(ResearchOutput.id).where(ResearchOutput.id == output.id)).first() is None


# --- the worker asks for reports -------------------------------------------------------------------------------------


def reports_of(db: Session, application: Application) -> dict[ReportKind, ProgressReport]:
    db.expire_all()
    found = db.exec(select(ProgressReport).where(ProgressReport.application_id == application.id)).all()
    return {r.kind: r for r in found}


def notices(db: Session, user: User) -> list[str]:
    return [
        n.subject
        for n in db.exec(select(Notification).where(Notification.user_id == user.id).order_by(Notification.id))
    ]


def test_the_report_job_is_registered_with_the_worker():
    assert "request_award_reports" in [job.name for job in JOBS]


def test_reports_are_asked_at_the_middle_and_the_end_once_with_a_reminder_and_an_overdue_notice(db):
    w = build(db)
    application = award(db, w, w.project, w.pi)
    starts_at, ends_at = period_of(db, application)
    middle = starts_at + (ends_at - starts_at) / 2
    title = application.title
    before = len(notices(db, w.pi))

    def run(now: datetime) -> tuple[int, int]:
        return (
            outputs.request_award_reports(db, SETTINGS, now=now),
            outputs.remind_award_reports(db, SETTINGS, now=now),
        )

    assert run(starts_at + timedelta(days=1)) == (0, 0)
    assert run(middle - timedelta(minutes=1)) == (0, 0)
    assert reports_of(db, application) == {}

    assert run(middle) == (1, 0)
    progress = reports_of(db, application)[ReportKind.PROGRESS]
    assert progress.due_on == middle.date() + timedelta(days=SETTINGS.progress_report_due_days)
    assert progress.state(middle.date()) == "requested"
    assert run(middle + timedelta(hours=1)) == (0, 0)  # a second run asks nothing
    assert notices(db, w.pi)[before:] == [f"Progress report requested: {title}"]

    reminder_day = datetime.combine(progress.due_on, datetime.min.time(), UTC) - timedelta(
        days=SETTINGS.report_reminder_days
    )
    assert run(reminder_day - timedelta(days=1)) == (0, 0)
    assert run(reminder_day) == (0, 1)
    assert run(reminder_day + timedelta(hours=2)) == (0, 0)
    overdue_day = datetime.combine(progress.due_on + timedelta(days=1), datetime.min.time(), UTC)
    assert reports_of(db, application)[ReportKind.PROGRESS].state(overdue_day.date()) == "overdue"
    assert run(overdue_day) == (0, 1)
    assert run(overdue_day + timedelta(days=3)) == (0, 0)
    assert notices(db, w.pi)[before:] == [
        f"Progress report requested: {title}",
        f"Progress report due soon: {title}",
        f"Progress report overdue: {title}",
    ]

    assert run(ends_at - timedelta(seconds=1)) == (0, 0)
    assert run(ends_at) == (1, 0)
    assert run(ends_at + timedelta(days=1)) == (0, 0)
    final = reports_of(db, application)[ReportKind.FINAL]
    assert final.due_on == ends_at.date() + timedelta(days=SETTINGS.final_report_due_days)
    assert db.exec(select(ProgressReport).where(ProgressReport.application_id == application.id)).all().__len__() == 2

    outputs.submit_report(db, SETTINGS, w.pi, final, text="We trained three models.", now=ends_at + timedelta(days=2))
    assert reports_of(db, application)[ReportKind.FINAL].state(final.due_on + timedelta(days=5)) == "submitted"
    assert run(datetime.combine(final.due_on + timedelta(days=5), datetime.min.time(), UTC)) == (0, 0)  # no nagging
    assert f"Final report submitted: {title}" in notices(db, w.manager)


def test_an_award_first_seen_after_its_end_is_asked_only_for_its_final_report_already_overdue(db):
    w = build(db, past_capacity=True)
    application = award(db, w, w.project, w.pi, starts_on=past_quarter())
    _starts_at, ends_at = period_of(db, application)
    now = ends_at + timedelta(days=SETTINGS.final_report_due_days + 10)
    before = len(notices(db, w.pi))
    assert outputs.request_award_reports(db, SETTINGS, now=now) == 1
    assert outputs.remind_award_reports(db, SETTINGS, now=now) == 0  # the request said it all
    found = reports_of(db, application)
    assert set(found) == {ReportKind.FINAL}
    assert found[ReportKind.FINAL].state(now.date()) == "overdue"
    assert notices(db, w.pi)[before:] == [f"Final report requested: {application.title}"]


# --- what the call manager and a new application see ---------------------------------------------------------------


@pytest.fixture
def ended(app: Flask, db: Session, login, client):
    """An award of the Fast Lane call to the logged-in PI's project that ended months ago, and its manager logged
    in; the worker has run once today."""
    w = build(db, past_capacity=True)
    w.pi = login(client, given_name="Paula")
    w.pi_client = client
    w.project = projects.create_project(db, w.pi, projects.create_organisation(
        db, w.pi, name="Kaunas Uni", kind="university", country="LT"), title="Lithuanian speech")  # fmt: skip
    w.manager_client = app.test_client()
    w.manager = login(w.manager_client, given_name="Mona")
    w.call = make_call(db, w.gpu.id, w.manager, mode=ReviewMode.TECHNICAL, title="Fast Lane second call")
    w.application = award(db, w, w.project, w.pi, starts_on=past_quarter())
    return w


def test_a_new_application_to_the_same_call_warns_of_the_missing_and_then_overdue_final_report(ended, db):
    w = ended
    again = grants.start_application(db, w.pi, login_of(w.pi), call=w.call, project=w.project, title="Second run")
    _starts, ends_at = period_of(db, w.application)
    editor = text(w.pi_client.get(f"/applications/{again.id}/edit"))
    assert editor.count('id="report-warnings"') == 1
    ended_on = formatting.date(ends_at)
    assert f"The final report on “{w.application.title}” is missing: its allocations ended on {ended_on}." in editor

    assert outputs.request_award_reports(db, SETTINGS) == 1
    final = reports_of(db, w.application)[ReportKind.FINAL]
    editor = text(w.pi_client.get(f"/applications/{again.id}/edit"))
    assert editor.count('id="report-warnings"') == 1
    due_on = formatting.date(final.due_on)
    overdue = f"The final report on “{w.application.title}” was due on {due_on} and is not submitted."
    assert overdue in editor
    assert "You may still apply" in editor  # a warning, not a block
    grants.save_draft(
        db,
        w.pi,
        again,
        abstract="More",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(w.gpu.id, 10 * HOUR, "More training")],
    )
    grants.submit(db, SETTINGS, w.pi, login_of(w.pi), again)
    assert again.state == ApplicationState.SUBMITTED
    deciding = text(w.manager_client.get(f"/applications/{again.id}"))  # the call's manager sees it too
    assert overdue in deciding

    outputs.submit_report(db, SETTINGS, w.pi, final, text="Done: three models and a corpus.")
    assert outputs.report_warnings(db, w.project, w.call, today=date.today(), exclude_application_id=again.id) == []
    assert 'id="report-warnings"' not in text(w.manager_client.get(f"/applications/{again.id}"))
    other_call = make_call(db, w.gpu.id, w.manager, mode=ReviewMode.TECHNICAL, title="Another call")
    assert outputs.report_warnings(db, w.project, other_call, today=date.today()) == []


def test_the_call_manager_sees_overdue_reports_on_the_manage_page(ended, db):
    w = ended
    assert "No report is requested yet" in text(w.manager_client.get(f"/calls/{w.call.id}/manage"))
    outputs.request_award_reports(db, SETTINGS)
    report = reports_of(db, w.application)[ReportKind.FINAL]
    page = text(w.manager_client.get(f"/calls/{w.call.id}/manage"))
    assert "1 overdue of 1 requested." in page
    row = re.search(rf'<tr id="award-report-{report.id}" class="overdue">(.*?)</tr>', page)
    assert row and "Final report" in row.group(1) and w.project.title in row.group(1) and ">overdue<" in row.group(1)
    # the PI sees it on the project page, and writes it there
    project_page = text(w.pi_client.get(f"/projects/{w.project.id}"))
    assert f'id="award-report-{report.id}"' in project_page and ">overdue<" in project_page
    empty = post_form(
        w.pi_client, f"/progress-reports/{report.id}", {"text": " "}, page=f"/progress-reports/{report.id}"
    )
    assert empty.status_code == 422 and "Required." in text(empty)
    sent = post_form(
        w.pi_client,
        f"/progress-reports/{report.id}",
        {"text": "Three models, one corpus."},
        page=f"/progress-reports/{report.id}",
    )
    assert sent.status_code == 302
    again = post_form(
        w.pi_client, f"/progress-reports/{report.id}", {"text": "Again"}, page=f"/projects/{w.project.id}"
    )
    assert again.status_code == 409
    page = text(w.manager_client.get(f"/calls/{w.call.id}/manage"))
    assert "0 overdue of 1 requested." in page and ">submitted<" in page
    assert "Three models, one corpus." in text(w.manager_client.get(f"/progress-reports/{report.id}"))


def test_only_the_projects_members_and_the_calls_manager_read_a_report_and_only_editors_write_it(ended, db, app, login):
    w = ended
    outputs.request_award_reports(db, SETTINGS)
    report = reports_of(db, w.application)[ReportKind.FINAL]
    path = f"/progress-reports/{report.id}"
    stranger = app.test_client()
    login(stranger, given_name="Sten")
    assert stranger.get(path).status_code == 404
    assert post_form(stranger, path, {"text": "Intruder"}).status_code == 404
    member_client = app.test_client()
    member = login(member_client, given_name="Mikk")
    _inv, link = projects.invite_member(db, SETTINGS, w.pi, w.project, email=member.email or "", role="member")
    projects.accept_invitation(db, member, link.rsplit("/", 1)[1])
    page = text(member_client.get(path))
    assert "The project's PI or a manager writes this report" in page and "Submit the report" not in page
    assert post_form(member_client, path, {"text": "Not mine to write"}).status_code == 403
    assert "Submit the report" in text(w.pi_client.get(path))
    assert reports_of(db, w.application)[ReportKind.FINAL].submitted_at is None


# --- the operators' counts ------------------------------------------------------------------------------------------


def test_operators_count_outputs_per_call_site_and_country(app: Flask, db: Session, login):
    w = build(db)
    first = award(db, w, w.project, w.pi)
    latvian_pi = person(db, "Liga")
    latvian = project_in(db, latvian_pi, "Riga Uni", "LV", "Latvian vision")
    award(db, w, latvian, latvian_pi)
    unfunded_pi = person(db, "Uno")
    unfunded = project_in(db, unfunded_pi, "Tallinn Uni", "EE", "No award")
    for kind, citation in [("publication", "A"), ("publication", "B"), ("dataset", "C")]:
        outputs.add_output(db, w.pi, w.project, kind=kind, citation=citation, year=2026)
    outputs.add_output(db, latvian_pi, latvian, kind="software", citation="D", year=2026)
    outputs.add_output(db, unfunded_pi, unfunded, kind="publication", citation="E", year=2026)  # counted nowhere
    assert first.call_id == w.call.id

    admin_client = app.test_client()
    operator_admin = login(admin_client, given_name="Ada")
    grant_role(db, None, operator_admin, FactoryRole.ADMIN, reason="test setup")
    _scope, table = reports.report_table(db, operator_admin, "outputs", reports.parse_filter())
    mine = [r for r in table.rows if r["call_id"] == w.call.id]
    assert mine == [
        {"call_id": w.call.id, "call": w.call.title, "site": w.site.name, "country": "LT",
         "publications": 2, "datasets": 1, "softwares": 0, "outputs": 3},
        {"call_id": w.call.id, "call": w.call.title, "site": w.site.name, "country": "LV",
         "publications": 0, "datasets": 0, "softwares": 1, "outputs": 1},
    ]  # fmt: skip

    page = text(admin_client.get("/reports/calls"))
    assert "Research outputs per call, site and country" in page
    response = admin_client.get("/reports/outputs.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == ["call_id", "call", "site", "country", "publications", "datasets", "softwares", "outputs"]
    assert [str(w.call.id), w.call.title, w.site.name, "LT", "2", "1", "0", "3"] in rows

    # a site operator sees the counts of their own sites only
    elsewhere = staff(db, FactoryRole.SITE_OPERATOR, "Elsewhere")
    _scope, theirs = reports.report_table(db, elsewhere, "outputs", reports.parse_filter())
    assert theirs.rows == []
    reports.assign_site(db, None, elsewhere, w.site, reason="test setup")
    _scope, theirs = reports.report_table(db, elsewhere, "outputs", reports.parse_filter())
    assert [(r["country"], r["outputs"]) for r in theirs.rows if r["call_id"] == w.call.id] == [("LT", 3), ("LV", 1)]


# --- several workers at once (PostgreSQL) ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_workers_running_the_report_job_at_once_ask_and_remind_once(engine):  # noqa: F811
    with Session(engine, expire_on_commit=False) as db:
        w = build(db)
        application = award(db, w, w.project, w.pi)
        starts_at, ends_at = period_of(db, application)
    middle = starts_at + (ends_at - starts_at) / 2

    def job(now: datetime):
        def run(_i: int) -> int:
            with Session(engine, expire_on_commit=False) as db:
                return outputs.request_award_reports(db, SETTINGS, now=now) + outputs.remind_award_reports(
                    db, SETTINGS, now=now
                )

        return run

    results = all_at_once(6, job(middle))
    assert not [r for r in results if isinstance(r, Exception)], results
    with Session(engine) as db:
        (progress,) = reports_of(db, application).values()
        due = datetime.combine(progress.due_on, datetime.min.time(), UTC)
    results = all_at_once(6, job(due - timedelta(days=1)))  # within the reminder days
    assert not [r for r in results if isinstance(r, Exception)], results
    with Session(engine) as db:
        assert list(reports_of(db, application)) == [ReportKind.PROGRESS]
        assert [s for s in notices(db, w.pi) if s.startswith("Progress report")] == [
            f"Progress report requested: {application.title}",
            f"Progress report due soon: {application.title}",
        ]
