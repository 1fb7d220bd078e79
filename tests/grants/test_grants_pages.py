"""The grants pages through the Flask test client, with real logins: applying, the draft editor and its
autosave, submitting, withdrawing, the call manager's steps and refusals, reviews, the dashboard, the CSV
export, the inbox and call creation."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from portal import formatting
from portal.grants import services as grants
from portal.grants.catalogue import ensure_default_calls
from portal.grants.models import (
    AccessMode,
    Application,
    ApplicationFile,
    ApplicationState,
    ApplicationVersion,
    Award,
    Call,
    CallBudget,
    CallState,
    Reply,
    ResourceRequest,
    Review,
    ReviewKind,
    ReviewMode,
    ReviewState,
)
from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.ledger.models import Allocation
from portal.notifications.models import Notification
from portal.projects import services as projects
from tests.conftest import EIDAS, post_form
from tests.grants_world import QUESTIONS, login_of, make_call, plan_capacity_from_today
from tests.ledger_world import HOUR, make_world

S = ApplicationState
PDF_LIMIT = 1024 * 1024
PLAN = {"key": "plan", "label": "Work plan", "type": "pdf", "required": False, "max_bytes": PDF_LIMIT}
PAGE_QUESTIONS = [*QUESTIONS, PLAN]
SCORES = {"excellence": 5, "impact": 4, "readiness": 3}
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def text(response) -> str:
    """The page as one line of text with single spaces, for assertions on what a person reads."""
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def open_call(
    db: Session, manager: User, gpu_id: int, *, mode: ReviewMode = ReviewMode.PEER_REVIEW, budget_hours: int = 500
) -> Call:
    return make_call(
        db,
        gpu_id,
        manager,
        mode=mode,
        budget_hours=budget_hours,
        questions=PAGE_QUESTIONS,
        title=f"{mode.value.replace('_', ' ').title()} pages call",
    )


def logged_in(app: Flask, login, db: Session, given: str, role: FactoryRole | None = None):
    client = app.test_client()
    user = login(client, given_name=given, family_name="Tester")
    if role is not None:
        grant_role(db, None, user, role, reason="test setup")
    return client, user


@pytest.fixture
def g(app: Flask, db: Session, login, client: FlaskClient, settings) -> SimpleNamespace:
    """A logged-in PI with a project of a Lithuanian university, a logged-in call manager, an open peer-review
    call with a 1 MB PDF question, and a GPU resource with capacity for awards starting today."""
    pi = login(client, given_name="Paula", family_name="Pietarinen")
    manager_client, manager = logged_in(app, login, db, "Mona")
    world = make_world(db)
    plan_capacity_from_today(db, world.gpu)
    call = open_call(db, manager, world.gpu.id)
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    return SimpleNamespace(
        app=app,
        settings=settings,
        pi=pi,
        pi_client=client,
        manager=manager,
        manager_client=manager_client,
        gpu=world.gpu,
        call=call,
        org=org,
        project=project,
        login=login,
    )


def draft(db: Session, g: SimpleNamespace, *, hours: int = 200, title: str = "Speech models", project=None):
    application = grants.start_application(
        db, g.pi, login_of(g.pi), call=g.call, project=project or g.project, title=title
    )
    grants.save_draft(
        db,
        g.pi,
        application,
        abstract="Train ASR models for Lithuanian.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(g.gpu.id, hours * HOUR, "Three models, ten days each")],
    )
    return application


def submitted(db: Session, g: SimpleNamespace, **kwargs: Any) -> Application:
    application = draft(db, g, **kwargs)
    grants.submit(db, g.settings, g.pi, login_of(g.pi), application)
    return application


def reload(db: Session, application: Application) -> Application:
    db.expire_all()
    found = db.get(Application, application.id)
    assert found is not None
    return found


def fresh(db: Session, model, ident: int):
    db.expire_all()
    return db.get(model, ident)


def autosave(client: FlaskClient, application_id: int, data: dict[str, Any]):
    return post_form(
        client,
        f"/applications/{application_id}/save",
        data,
        headers={"HX-Request": "true"},
    )


# --- calls and applying ----------------------------------------------------------------------------------------


def test_open_calls_show_budget_cutoff_and_decision_date(g, db):
    page = text(g.pi_client.get("/calls"))
    cutoff = grants.next_cutoff(g.call, datetime.now(UTC))
    assert cutoff == date.today() + timedelta(days=14)
    due = grants.decision_due(g.call, cutoff)
    assert g.call.title in page and "Large Scale" in page
    assert "500 GPU-hours (H100), Test Centre" in page
    assert f"Next cut-off</dt><dd>{formatting.date(cutoff)}" in page.replace("> <", "><")
    assert f"Decision due</dt><dd>{formatting.date(due)}" in page.replace("> <", "><")

    details = text(g.pi_client.get(f"/calls/{g.call.id}"))
    assert "Scientific excellence: 50 %" in details
    assert "Work plan (PDF) (optional)" in details
    assert re.search(rf'<option value="{g.project.id}">Baltic speech \(Vilnius Uni\)</option>', details)


def test_a_pi_starts_an_application_and_lands_in_the_editor(g, db):
    response = post_form(
        g.pi_client,
        f"/calls/{g.call.id}/apply",
        {"project_id": g.project.id, "title": "Lithuanian ASR"},
        page=f"/calls/{g.call.id}",
    )
    assert response.status_code == 302
    application = db.exec(select(Application).where(Application.project_id == g.project.id)).one()
    assert response.headers["Location"] == f"/applications/{application.id}/edit"
    assert (application.title, application.state, application.applicant_id) == ("Lithuanian ASR", S.DRAFT, g.pi.id)
    editor = g.pi_client.get(f"/applications/{application.id}/edit")
    assert editor.status_code == 200
    html = editor.get_data(as_text=True)
    assert f'hx-post="/applications/{application.id}/save"' in html
    assert 'hx-trigger="input changed delay:800ms"' in html
    assert 'maxlength="500"' in html  # the software question's limit
    assert '<option value="NLP">NLP</option>' in html  # the choice question as a select
    assert 'type="file"' in html and "PDF, at most 1 MB." in html


def test_a_pi_with_a_low_assurance_login_is_told_how_to_apply(g, db, login):
    client = g.app.test_client()
    weak = login(client, given_name="Wanda", acr=EIDAS + "low")
    org = projects.create_organisation(db, weak, name="Riga Uni", kind="university", country="LV")
    project = projects.create_project(db, weak, org, title="Weak project")
    page = text(client.get(f"/calls/{g.call.id}"))
    assert "log in with your institution (academic federation) or with eIDAS at level substantial" in page
    response = post_form(
        client, f"/calls/{g.call.id}/apply", {"project_id": project.id, "title": "T"}, page=f"/calls/{g.call.id}"
    )
    assert response.status_code == 409
    assert "Not eligible" in text(response)
    assert db.exec(select(Application).where(Application.project_id == project.id)).all() == []


def test_only_ones_own_projects_can_be_chosen(g, db, login):
    client = g.app.test_client()
    login(client, given_name="Intruder")
    response = post_form(
        client, f"/calls/{g.call.id}/apply", {"project_id": g.project.id, "title": "Hijack"}, page="/calls"
    )
    assert response.status_code == 422
    assert "Not a valid choice" in text(response)
    assert db.exec(select(Application)).all() == []


# --- the draft editor ------------------------------------------------------------------------------------------


def test_the_draft_saves_as_you_type_and_reports_field_errors(g, db):
    application = grants.start_application(db, g.pi, login_of(g.pi), call=g.call, project=g.project, title="T")
    hours = f"hours_{g.gpu.id}"
    response = autosave(
        g.pi_client,
        application.id,
        {
            "title": "Speech for Baltic languages",
            "abstract": "We train ASR models.",
            "q_0": "PyTorch 2.5",
            "q_1": "16",
            "q_2": "NLP",
            hours: "120.5",
            f"justification_{g.gpu.id}": "Three runs",
            "co_applicants": "ona@vu.example.lt\njonas@vu.example.lt",
        },
    )
    assert response.status_code == 200
    assert re.fullmatch(r'\s*<p class="saved">Saved \d\d:\d\d UTC</p>\s*', response.get_data(as_text=True))
    application = reload(db, application)
    assert application.title == "Speech for Baltic languages"
    assert application.answers == {"software": "PyTorch 2.5", "nodes": 16, "field": "NLP"}
    assert application.co_applicants == ["ona@vu.example.lt", "jonas@vu.example.lt"]
    (request,) = db.exec(select(ResourceRequest).where(ResourceRequest.application_id == application.id)).all()
    assert (request.requested, request.justification) == (int(120.5 * HOUR), "Three runs")

    # Wrong values are named in the status; everything else is still saved.
    response = autosave(
        g.pi_client,
        application.id,
        {
            "title": "Speech for Baltic languages",
            "abstract": "We train ASR models. Changed.",
            "q_0": "PyTorch 2.5",
            "q_1": "many",
            "q_2": "NLP",
            hours: "lots",
            f"justification_{g.gpu.id}": "Three runs",
            "co_applicants": "not-an-address",
        },
    )
    assert response.status_code == 200
    status = text(response)
    assert "Saved" in status and "except:" in status
    assert '<a href="#q_1">Largest job (GPUs)</a>: Enter a whole number.' in status
    assert f'<a href="#{hours}">H100 GPU-hours, Test Centre</a>: Enter a number, for example 12.5.' in status
    assert "Not an e-mail address: not-an-address" in status
    application = reload(db, application)
    assert application.abstract == "We train ASR models. Changed."
    assert application.answers["nodes"] == 16  # the refused answer kept its saved value
    assert application.co_applicants == ["ona@vu.example.lt", "jonas@vu.example.lt"]
    assert db.get(ResourceRequest, request.id).requested == int(120.5 * HOUR)


def test_the_save_button_works_without_javascript(g, db):
    application = grants.start_application(db, g.pi, login_of(g.pi), call=g.call, project=g.project, title="T")
    data = {"title": "Plain form", "abstract": "", "q_0": "", "q_1": "3", "q_2": "", f"hours_{g.gpu.id}": ""}
    response = post_form(g.pi_client, f"/applications/{application.id}/edit", data)
    assert response.status_code == 302
    assert reload(db, application).answers == {"software": None, "nodes": 3, "field": None}
    response = post_form(g.pi_client, f"/applications/{application.id}/edit", {**data, "q_1": "9999"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert re.search(r'id="q_1"[^>]*aria-invalid="true"|aria-invalid="true"[^>]*id="q_1"', page)
    assert '<p class="error" id="q_1-error">Enter a number between 1 and 512.</p>' in page
    assert 'value="9999"' in page  # what was typed stays in the field


def test_submitting_an_incomplete_draft_shows_the_problems_and_changes_nothing(g, db):
    application = grants.start_application(db, g.pi, login_of(g.pi), call=g.call, project=g.project, title="T")

    def state() -> tuple[Any, ...]:
        found = reload(db, application)
        versions = db.exec(select(ApplicationVersion).where(ApplicationVersion.application_id == found.id)).all()
        return (
            found.state,
            found.version,
            found.submitted_at,
            found.updated_at,
            found.title,
            found.abstract,
            found.answers,
            len(versions),
            len(db.exec(select(Notification)).all()),
        )

    before = state()
    response = post_form(
        g.pi_client, f"/applications/{application.id}/submit", page=f"/applications/{application.id}/edit"
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "The application is not complete yet. Nothing was submitted." in page
    assert '<p class="error" id="abstract-error">Write a short abstract.</p>' in page
    assert '<p class="error" id="q_0-error">This question needs an answer.</p>' in page
    assert '<p class="error" id="q_1-error">This question needs an answer.</p>' in page
    assert '<p class="error" id="requests-error">Ask for hours of at least one resource.</p>' in page
    assert state() == before

    # Too many hours: the call's range is named at the requests.
    grants.save_draft(
        db,
        g.pi,
        application,
        abstract="A",
        answers={"software": "JAX", "nodes": "4"},
        requests=[grants.RequestInput(g.gpu.id, 500 * HOUR, "big")],
    )
    response = post_form(
        g.pi_client, f"/applications/{application.id}/submit", page=f"/applications/{application.id}/edit"
    )
    assert response.status_code == 422
    assert "This call takes requests between 1.0 GPU-hours and 400.0 GPU-hours; this one asks for 500.0" in text(
        response
    )
    assert reload(db, application).state == S.DRAFT


def test_the_submit_button_saves_the_editor_first_then_submits(g, db):
    application = grants.start_application(db, g.pi, login_of(g.pi), call=g.call, project=g.project, title="T")
    response = post_form(
        g.pi_client,
        f"/applications/{application.id}/submit",
        {
            "title": "Complete at once",
            "abstract": "Everything in one go.",
            "q_0": "JAX",
            "q_1": "4",
            "q_2": "",
            f"hours_{g.gpu.id}": "100",
            f"justification_{g.gpu.id}": "Fine-tuning",
            "co_applicants": "",
        },
        page=f"/applications/{application.id}/edit",
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/applications/{application.id}"
    application = reload(db, application)
    assert (application.state, application.version, application.title) == (S.SUBMITTED, 1, "Complete at once")
    page = text(g.pi_client.get(f"/applications/{application.id}"))
    assert "Submitted version 1" in page and "Everything in one go." in page and "100.0 GPU-hours" in page
    # a submitted application is no longer edited
    assert g.pi_client.get(f"/applications/{application.id}/edit").status_code == 302
    refused = autosave(g.pi_client, application.id, {"title": "Sneaky change"})
    assert "Only a draft can be edited" in text(refused)
    assert reload(db, application).title == "Complete at once"


def test_a_pi_withdraws_and_a_second_withdrawal_is_refused_by_name(g, db):
    application = submitted(db, g)
    page = text(g.pi_client.get(f"/applications/{application.id}"))
    assert "Withdraw the application" in page
    response = post_form(g.pi_client, f"/applications/{application.id}/withdraw")
    assert response.status_code == 302
    assert reload(db, application).state == S.WITHDRAWN
    again = post_form(g.pi_client, f"/applications/{application.id}/withdraw")
    assert again.status_code == 409
    assert "Not possible in this state" in text(again)
    assert "An application that is withdrawn cannot withdraw." in text(again)
    manager_inbox = db.exec(select(Notification.subject).where(Notification.user_id == g.manager.id)).all()
    assert "Application withdrawn: Speech models" in manager_inbox


def test_pdf_uploads_are_kept_and_wrong_files_refused(g, db, login):
    application = draft(db, g)
    path = f"/applications/{application.id}/files"
    editor = f"/applications/{application.id}/edit"

    def upload(content: bytes, name: str):
        return post_form(
            g.pi_client,
            path,
            {"question": "plan", "file": (io.BytesIO(content), name)},
            page=editor,
            content_type="multipart/form-data",
        )

    not_pdf = upload(b"GIF89a not a pdf at all", "plan.pdf")
    assert not_pdf.status_code == 422
    assert '<p class="error" id="pdf-3-error">This is not a PDF file.</p>' in not_pdf.get_data(as_text=True)
    too_big = upload(PDF + b"0" * PDF_LIMIT, "huge.pdf")
    assert too_big.status_code == 422
    assert "At most 1 MB." in text(too_big)
    assert db.exec(select(ApplicationFile)).all() == []
    assert "plan" not in reload(db, application).answers

    accepted = upload(PDF, "work-plan.pdf")
    assert accepted.status_code == 302
    (stored,) = db.exec(select(ApplicationFile)).all()
    assert (stored.filename, stored.size, stored.content) == ("work-plan.pdf", len(PDF), PDF)
    assert reload(db, application).answers["plan"] == stored.id
    assert "work-plan.pdf" in text(g.pi_client.get(editor))

    download = g.pi_client.get(f"/files/{stored.id}")
    assert download.status_code == 200
    assert download.mimetype == "application/pdf"
    assert "attachment" in download.headers["Content-Disposition"]
    assert download.data == PDF
    stranger = g.app.test_client()
    login(stranger)
    assert stranger.get(f"/files/{stored.id}").status_code == 404


# --- the call manager ------------------------------------------------------------------------------------------


def test_an_illegal_step_is_refused_with_its_name_and_409(g, db):
    application = submitted(db, g)
    page = text(g.manager_client.get(f"/applications/{application.id}"))
    assert "Pass the administrative check" in page and "Fail the administrative check" in page
    assert "Rank the application" not in page  # only the legal next steps have forms
    response = post_form(g.manager_client, f"/applications/{application.id}/rank")
    assert response.status_code == 409
    refused = text(response)
    assert "Not possible in this state" in refused
    assert "An application that is submitted cannot rank." in refused
    assert "Pass the administrative check" in refused  # the page is there again, with its forms
    assert reload(db, application).state == S.SUBMITTED
    # the applicant may not take the manager's steps
    assert post_form(g.pi_client, f"/applications/{application.id}/check", {"decision": "pass"}).status_code == 403
    assert reload(db, application).state == S.SUBMITTED


def test_an_ineligible_organisation_cannot_pass_the_check_and_fails_with_reasons(g, db, login):
    company = projects.create_organisation(db, g.pi, name="Speech OÜ", kind="sme", country="EE")
    project = projects.create_project(db, g.pi, company, title="Company project")
    application = submitted(db, g, project=project)
    page = text(g.manager_client.get(f"/applications/{application.id}"))
    assert "Eligibility:" in page and "this call is for university" in page
    response = post_form(g.manager_client, f"/applications/{application.id}/check", {"decision": "pass"})
    assert response.status_code == 409
    assert "Not eligible" in text(response)
    missing_reason = post_form(g.manager_client, f"/applications/{application.id}/check", {"decision": "fail"})
    assert missing_reason.status_code == 422
    assert 'id="fail_reason-error"' in missing_reason.get_data(as_text=True)
    failed = post_form(
        g.manager_client,
        f"/applications/{application.id}/check",
        {"decision": "fail", "fail_reason": "Only universities may apply to this call."},
    )
    assert failed.status_code == 302
    application = reload(db, application)
    assert (application.state, application.decision_reason) == (S.REJECTED, "Only universities may apply to this call.")
    seen = text(g.pi_client.get(f"/applications/{application.id}"))
    assert "The application is not accepted." in seen and "Only universities may apply to this call." in seen


def test_the_review_pipeline_through_the_pages(g, db):
    app, login = g.app, g.login
    application = submitted(db, g, hours=200)
    m, a = g.manager_client, f"/applications/{application.id}"
    operator_client, operator = logged_in(app, login, db, "Olev", FactoryRole.SITE_OPERATOR)
    reviewers = [logged_in(app, login, db, name, FactoryRole.REVIEWER) for name in ("Rasa", "Rutger", "Conrad")]

    assert post_form(m, f"{a}/check", {"decision": "pass"}).status_code == 302
    assert reload(db, application).state == S.TECHNICAL_ASSESSMENT

    # assigning: an unknown address and a person without the role are named next to the field
    unknown = post_form(m, f"{a}/reviewers", {"email": "nobody@example.eu", "kind": "technical"})
    assert unknown.status_code == 422
    assert "No user with the e-mail address nobody@example.eu" in text(unknown)
    no_role = post_form(m, f"{a}/reviewers", {"email": reviewers[0][1].email, "kind": "technical"})
    assert no_role.status_code == 422
    assert "Rasa Tester is not a site operator." in text(no_role)
    assert '<p class="error" id="email-error">Needs the site_operator role.</p>' in text(no_role)
    too_early = post_form(m, f"{a}/complete-technical-assessment")
    assert too_early.status_code == 409
    assert "A site operator&#39;s technical assessment must be submitted first." in text(too_early)
    due = (date.today() + timedelta(days=7)).isoformat()
    assigned = post_form(m, f"{a}/reviewers", {"email": operator.email, "kind": "technical", "due_on": due})
    assert assigned.status_code == 302
    tech = db.exec(select(Review).where(Review.reviewer_id == operator.id)).one()
    assert tech.due_on == date.today() + timedelta(days=7)

    # the operator's assessment
    listing = text(operator_client.get("/reviews"))
    assert "Speech models" in listing and formatting.date(tech.due_on) in listing  # "Dec 10, 2026": the locale's way
    form = text(operator_client.get(f"/reviews/{tech.id}"))
    assert "Can the work run as planned on the requested resources?" in form
    assert "Train ASR models for Lithuanian." in form  # the frozen version
    incomplete = post_form(operator_client, f"/reviews/{tech.id}", {"comment_to_applicant": ""})
    assert incomplete.status_code == 422
    assert "Say whether the work is feasible here." in text(incomplete)
    done = post_form(
        operator_client, f"/reviews/{tech.id}", {"feasible": "yes", "comment_to_applicant": "Runs well on H100."}
    )
    assert done.status_code == 302
    assert fresh(db, Review, tech.id).feasible is True
    assert post_form(m, f"{a}/complete-technical-assessment").status_code == 302
    assert reload(db, application).state == S.PEER_REVIEW

    # scientific reviewers; the PI cannot review their own application
    grant_role(db, None, g.pi, FactoryRole.REVIEWER, reason="test setup")
    own = post_form(m, f"{a}/reviewers", {"email": g.pi.email, "kind": "scientific"})
    assert own.status_code == 409
    assert "Conflict of interest" in text(own) and "is a member of the project" in text(own)
    for _client, reviewer in reviewers:
        assert post_form(m, f"{a}/reviewers", {"email": reviewer.email, "kind": "scientific"}).status_code == 302
    sci = {r.reviewer_id: r for r in db.exec(select(Review).where(Review.kind == ReviewKind.SCIENTIFIC)).all()}
    (first_client, first), (second_client, second), (third_client, third) = reviewers

    # the third declares a conflict of interest
    conflict_page = text(third_client.get(f"/reviews/{sci[third.id].id}"))
    assert "Declare a conflict of interest" in conflict_page
    assert post_form(third_client, f"/reviews/{sci[third.id].id}/conflict", {"conflict_reason": ""}).status_code == 422
    declared = post_form(
        third_client, f"/reviews/{sci[third.id].id}/conflict", {"conflict_reason": "I co-supervise the PI's student."}
    )
    assert declared.status_code == 302
    assert fresh(db, Review, sci[third.id].id).state == ReviewState.CONFLICT
    # ... and can no longer review, nor read the application
    late = post_form(
        third_client,
        f"/reviews/{sci[third.id].id}",
        {"score_0": "5", "score_1": "5", "score_2": "5", "comment_to_applicant": "x"},
    )
    assert late.status_code == 404
    assert third_client.get(f"/reviews/{sci[third.id].id}").status_code == 404
    assert third_client.get(a).status_code == 404
    assert "declined: conflict of interest" in text(third_client.get("/reviews"))

    # too few reviews for the reply
    assert post_form(m, f"{a}/request-reply").status_code == 409

    # the first reviewer: a score missing is named at its criterion; nobody else's review is visible yet
    page = text(first_client.get(f"/reviews/{sci[first.id].id}"))
    assert "Scientific excellence (weight 50 %)" in page
    assert "Runs well on H100." not in page  # the technical assessment shows only after one's own review
    missing = post_form(
        first_client,
        f"/reviews/{sci[first.id].id}",
        {"score_0": "5", "score_1": "4", "comment_to_applicant": "Strong team."},
    )
    assert missing.status_code == 422
    assert '<p class="error" id="score_2-error">Score from 1 to 5.</p>' in missing.get_data(as_text=True)
    for n, (client, reviewer, scores, comment) in enumerate(
        [
            (first_client, first, ("5", "4", "3"), "Strong team."),
            (second_client, second, ("3", "4", "5"), "Ambitious but feasible."),
        ],
        start=1,
    ):
        response = post_form(
            client,
            f"/reviews/{sci[reviewer.id].id}",
            {
                "score_0": scores[0],
                "score_1": scores[1],
                "score_2": scores[2],
                "comment_to_applicant": comment,
                "comment_to_panel": f"Panel only: reviewer {n} says fund it.",
            },
        )
        assert response.status_code == 302
    after = text(first_client.get(f"/reviews/{sci[first.id].id}"))
    assert "Ambitious but feasible." in after and "Runs well on H100." in after  # others, once one's own is in
    assert "I co-supervise" not in after  # never the declined one
    assert "Conrad" not in after and "Rutger" not in after  # and without names

    # the manager sees every review with names and panel comments; then asks for the reply
    manager_page = text(m.get(a))
    assert "<td>Rutger Tester</td>" in manager_page and "Panel only: reviewer 2 says fund it." in manager_page
    assert "I co-supervise the PI&#39;s student." in manager_page
    assert post_form(m, f"{a}/request-reply").status_code == 302
    assert reload(db, application).state == S.REPLY

    # the applicant reads the comments without names or panel notes, and replies
    seen = text(g.pi_client.get(a))
    for comment in ("Runs well on H100.", "Strong team.", "Ambitious but feasible."):
        assert comment in seen
    for hidden in ("Panel only", "Rasa", "Rutger", "Olev", "Conrad", "co-supervise"):
        assert hidden not in seen
    assert "Scientific review 1" in seen and "Technical assessment" in seen
    assert "Send the reply" in seen, seen[seen.find("<main") :]
    assert post_form(g.pi_client, f"{a}/reply", {"reply": "We will checkpoint every hour."}).status_code == 302
    assert db.exec(select(Reply.text)).one() == "We will checkpoint every hour."

    # ranking; the reply shows to the manager
    assert "We will checkpoint every hour." in text(m.get(a))
    assert post_form(m, f"{a}/rank").status_code == 302
    application = reload(db, application)
    assert application.score == ((5 * 50 + 4 * 30 + 3 * 20) + (3 * 50 + 4 * 30 + 5 * 20)) // 2

    # accepting: more than requested is refused next to the field; then 150 of 200 hours, half now
    award = f"award_{g.gpu.id}"
    too_much = post_form(m, f"{a}/accept", {award: "201", "first_tranche_percent": "100"})
    assert too_much.status_code == 422
    assert f'<p class="error" id="{award}-error">Award between zero and the hours requested.</p>' in (
        too_much.get_data(as_text=True)
    )
    accepted = post_form(
        m, f"{a}/accept", {award: "150", "first_tranche_percent": "50", "accept_reason": "Well argued."}
    )
    assert accepted.status_code == 302
    application = reload(db, application)
    assert application.state == S.ACCEPTED
    allocation = db.exec(select(Allocation).where(Allocation.project_id == g.project.id)).one()
    assert allocation.balance == 75 * HOUR
    decision = text(g.pi_client.get(a))
    assert "The application is accepted." in decision and "Well argued." in decision
    assert "150.0 GPU-hours" in decision and "held until the progress report" in decision

    held = db.exec(select(Award).where(Award.application_id == application.id, Award.tranche == 2)).one()
    assert post_form(m, f"{a}/tranches/{held.id}/release").status_code == 302
    db.expire_all()
    assert db.get(Allocation, allocation.id).balance == 150 * HOUR
    again = post_form(m, f"{a}/tranches/{held.id}/release")
    assert again.status_code == 409 and "This tranche was released already." in text(again)
    project_page = text(g.pi_client.get(f"/projects/{g.project.id}"))
    assert "Large Scale: Speech models" in project_page


def test_the_review_request_notice_opens_the_review(g, db, login):
    draft(db, g, title="Another application first")  # so that application and review ids differ
    application = submitted(db, g)
    grants.administrative_check(db, g.settings, g.manager, application, passed=True)
    client, operator = logged_in(g.app, login, db, "Olev", FactoryRole.SITE_OPERATOR)
    review = grants.assign_reviewer(db, g.settings, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
    notice = db.exec(select(Notification).where(Notification.user_id == operator.id)).one()
    opened = post_form(client, f"/inbox/{notice.id}/read", {"open": "1"})
    assert opened.headers["Location"] == f"/reviews/{review.id}"
    assert client.get(opened.headers["Location"]).status_code == 200


def test_a_spent_budget_refuses_the_award_by_name(g, db, login):
    call = open_call(db, g.manager, g.gpu.id, mode=ReviewMode.TECHNICAL, budget_hours=100)
    g.call = call
    application = submitted(db, g, hours=150)
    grants.administrative_check(db, g.settings, g.manager, application, passed=True)
    _client, operator = logged_in(g.app, login, db, "Olev", FactoryRole.SITE_OPERATOR)
    review = grants.assign_reviewer(db, g.settings, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, review.id, comment_to_applicant="OK", feasible=True)
    grants.complete_technical_assessment(db, g.settings, g.manager, application)
    assert application.state == S.RANKED  # Fast Lane: straight to the decision
    response = post_form(
        g.manager_client,
        f"/applications/{application.id}/accept",
        {f"award_{g.gpu.id}": "150", "first_tranche_percent": "100"},
    )
    assert response.status_code == 409
    assert "Call budget exhausted" in text(response)
    assert "The call has 100.0 GPU-hours left for H100 GPU-hours at" in text(response)
    assert reload(db, application).state == S.RANKED
    rejected = post_form(
        g.manager_client, f"/applications/{application.id}/reject", {"reject_reason": "The budget is spent."}
    )
    assert rejected.status_code == 302
    assert reload(db, application).state == S.REJECTED


# --- the dashboard and the CSV export ------------------------------------------------------------------------


def fast_lane_world(g: SimpleNamespace, db: Session, login) -> dict[str, Application]:
    """A Fast Lane call with a draft, two submitted, a withdrawn, an accepted and a rejected application."""
    g.call = open_call(db, g.manager, g.gpu.id, mode=ReviewMode.TECHNICAL, budget_hours=1000)
    _client, operator = logged_in(g.app, login, db, "Olev", FactoryRole.SITE_OPERATOR)
    apps = {
        "draft": draft(db, g, hours=11, title="Still a draft"),
        "first": submitted(db, g, hours=100, title="First submitted"),
        "second": submitted(db, g, hours=50, title='=HYPERLINK("http://evil.example")'),
        "withdrawn": submitted(db, g, hours=70, title="Withdrawn one"),
        "accepted": submitted(db, g, hours=40, title="Accepted one"),
        "rejected": submitted(db, g, hours=25, title="Rejected one"),
    }
    grants.withdraw(db, g.settings, g.pi, apps["withdrawn"])
    for name in ("accepted", "rejected"):
        application = apps[name]
        grants.administrative_check(db, g.settings, g.manager, application, passed=True)
        review = grants.assign_reviewer(db, g.settings, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
        grants.submit_review(db, operator, review.id, comment_to_applicant="OK", feasible=True)
        grants.complete_technical_assessment(db, g.settings, g.manager, application)
    grants.decide_accept(db, g.settings, g.manager, apps["accepted"], awarded={g.gpu.id: 30 * HOUR})
    grants.decide_reject(db, g.settings, g.manager, apps["rejected"], reason="Out of scope.")
    return apps


def test_the_dashboard_counts_applications_and_hours(g, db, login):
    apps = fast_lane_world(g, db, login)
    response = g.manager_client.get(f"/calls/{g.call.id}/manage")
    assert response.status_code == 200
    page = text(response)

    # counted here from the database, independently of the page
    db.expire_all()
    rows = db.exec(select(Application).where(Application.call_id == g.call.id)).all()
    by_state: dict[str, int] = {}
    for row in rows:
        by_state[row.state.value] = by_state.get(row.state.value, 0) + 1
    assert by_state == {"draft": 1, "submitted": 2, "withdrawn": 1, "accepted": 1, "rejected": 1}
    for state, n in by_state.items():
        label = ApplicationState(state).label
        assert f'<li class="count-{state}"><span class="count">{n}</span> {label}</li>' in page
    assert '<li class="count-peer_review"><span class="count">0</span> peer review</li>' in page
    assert f'<span class="count">{len(rows)}</span> in all' in page

    live = [r for r in rows if r.state not in (S.DRAFT, S.WITHDRAWN)]
    requested = sum(
        rr.requested for rr in db.exec(select(ResourceRequest)).all() if rr.application_id in {a.id for a in live}
    )
    assert requested == (100 + 50 + 40 + 25) * HOUR
    budget = db.exec(select(CallBudget).where(CallBudget.call_id == g.call.id)).one()
    assert (budget.budget, budget.awarded) == (1000 * HOUR, 30 * HOUR)
    row = re.search(rf'<tr id="budget-{g.gpu.id}">(.*?)</tr>', page).group(1)
    cells = re.findall(r'<td class="num[^"]*">(.*?)</td>', row)
    assert cells == ["1,000.0 GPU-hours", "215.0 GPU-hours", "30.0 GPU-hours", "970.0 GPU-hours", "22 %"]

    # the list: submitted applications with their review progress, never the drafts
    assert "Still a draft" not in page
    assert "First submitted" in page and "Withdrawn one" in page
    accepted_row = re.search(rf'<tr id="application-{apps["accepted"].id}">(.*?)</tr>', page).group(1)
    assert "1 submitted" in accepted_row and "40.0 GPU-hours" in accepted_row
    assert "No application is ranked yet." in page  # Fast Lane has no scores


def test_the_ranking_table_marks_ties(g, db, login):
    operator = logged_in(g.app, login, db, "Olev", FactoryRole.SITE_OPERATOR)[1]
    reviewers = [logged_in(g.app, login, db, n, FactoryRole.REVIEWER)[1] for n in ("Rasa", "Rutger")]
    ranked = []
    for title, scores in (
        ("Middle A", {"excellence": 3, "impact": 3, "readiness": 3}),
        ("Best", {"excellence": 5, "impact": 5, "readiness": 5}),
        ("Middle B", {"excellence": 3, "impact": 3, "readiness": 3}),
    ):
        application = submitted(db, g, hours=10, title=title)
        grants.administrative_check(db, g.settings, g.manager, application, passed=True)
        tech = grants.assign_reviewer(db, g.settings, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
        grants.submit_review(db, operator, tech.id, comment_to_applicant="OK", feasible=True)
        grants.complete_technical_assessment(db, g.settings, g.manager, application)
        for reviewer in reviewers:
            review = grants.assign_reviewer(
                db, g.settings, g.manager, application, reviewer, kind=ReviewKind.SCIENTIFIC
            )
            grants.submit_review(db, reviewer, review.id, comment_to_applicant="Fine", scores=scores)
        grants.request_reply(db, g.settings, g.manager, application)
        grants.rank(db, g.settings, g.manager, application)
        ranked.append(application)
    page = g.manager_client.get(f"/calls/{g.call.id}/manage").get_data(as_text=True)
    table = re.search(r'<table id="ranking">(.*?)</table>', page, re.S).group(1)
    rows = [re.sub(r"<[^>]+>|\s+", " ", r).split() for r in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]]
    assert [r[:3] for r in rows] == [["1", "Best", "5.00"], ["2", "tie", "Middle"], ["2", "tie", "Middle"]]
    assert page.count('<tr class="tied">') == 2


def test_the_csv_export_lists_the_applications_in_display_units(g, db, login):
    apps = fast_lane_world(g, db, login)
    response = g.manager_client.get(f"/calls/{g.call.id}/applications.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    resource = "H100 GPU-hours, Test Centre (GPU-hours)"
    assert rows[0] == [
        "id",
        "title",
        "project",
        "organisation",
        "country",
        "state",
        f"requested {resource}",
        "score",
        f"awarded {resource}",
    ]
    body = {int(r[0]): r[1:] for r in rows[1:]}
    assert apps["draft"].id not in body
    where = ["Baltic speech", "Vilnius Uni", "LT"]
    assert body[apps["accepted"].id] == ["Accepted one", *where, "accepted", "40.0", "", "30.0"]
    assert body[apps["first"].id] == ["First submitted", *where, "submitted", "100.0", "", ""]
    assert body[apps["second"].id][0] == '\'=HYPERLINK("http://evil.example")'  # not a formula in a spreadsheet
    assert len(body) == 5


def test_only_the_manager_or_an_admin_sees_the_dashboard(g, db, login):
    for path in (f"/calls/{g.call.id}/manage", f"/calls/{g.call.id}/applications.csv"):
        assert g.pi_client.get(path).status_code == 403
        assert g.manager_client.get(path).status_code == 200
    admin_client, _admin = logged_in(g.app, login, db, "Ada", FactoryRole.ADMIN)
    assert admin_client.get(f"/calls/{g.call.id}/manage").status_code == 200
    hidden = grants.create_call(
        db,
        None,
        title="Unpublished",
        access_mode=AccessMode.FAST_LANE,
        review_mode=ReviewMode.TECHNICAL,
        manager=g.manager,
        budgets={g.gpu.id: HOUR},
        max_request=HOUR,
        opens_at=datetime.now(UTC),
        closes_at=datetime.now(UTC) + timedelta(days=1),
        first_cutoff=date.today(),
        reason="test setup",
    )
    assert g.pi_client.get(f"/calls/{hidden.id}/manage").status_code == 404
    assert g.pi_client.get(f"/calls/{hidden.id}").status_code == 404
    assert g.manager_client.get(f"/calls/{hidden.id}/manage").status_code == 200


# --- the inbox ------------------------------------------------------------------------------------------------


def test_the_inbox_counts_unread_notices_and_marks_them_read(g, db, login):
    assert "Inbox (0)" in text(g.pi_client.get("/calls"))
    application = submitted(db, g, title="First")
    grants.withdraw(db, g.settings, g.pi, application)
    submitted(db, g, title="Second")
    assert "Inbox (2)" in text(g.pi_client.get("/"))
    inbox = text(g.pi_client.get("/inbox"))
    assert inbox.index("Application submitted: Second") < inbox.index("Application submitted: First")
    assert inbox.count('<span class="tag new">New</span>') == 2
    notices = db.exec(select(Notification).where(Notification.user_id == g.pi.id).order_by(Notification.id)).all()
    response = post_form(g.pi_client, f"/inbox/{notices[0].id}/read")
    assert response.status_code == 302 and response.headers["Location"] == "/inbox"
    assert "Inbox (1)" in text(g.pi_client.get("/inbox"))
    opened = post_form(g.pi_client, f"/inbox/{notices[1].id}/read", {"open": "1"})
    assert opened.headers["Location"] == notices[1].link
    assert "Inbox (0)" in text(g.pi_client.get("/inbox"))
    # somebody else's notice is not there for them
    assert post_form(g.manager_client, f"/inbox/{notices[0].id}/read").status_code == 404
    manager_notices = db.exec(select(Notification).where(Notification.user_id == g.manager.id)).all()
    assert len(manager_notices) == 3  # two submissions, one withdrawal
    assert post_form(g.pi_client, f"/inbox/{manager_notices[0].id}/read").status_code == 404
    db.expire_all()
    assert db.get(Notification, manager_notices[0].id).read_at is None


def test_the_reviews_link_is_only_for_reviewers_and_site_operators(g, db, login):
    assert ">Reviews</a>" not in g.pi_client.get("/").get_data(as_text=True)
    client, _user = logged_in(g.app, login, db, "Rasa", FactoryRole.REVIEWER)
    assert ">Reviews</a>" in client.get("/").get_data(as_text=True)
    assert "Nobody has asked you for a review yet." in text(client.get("/reviews"))


# --- creating calls ------------------------------------------------------------------------------------------


def call_form(g: SimpleNamespace, **overrides: Any) -> dict[str, Any]:
    today = date.today()
    data = {
        "title": "Spring Fast Lane",
        "description": "Fine-tuning at moderate scale.",
        "access_mode": "fast_lane",
        "review_mode": "technical",
        "manager_email": g.manager.email,
        "eligible_kinds": ["university", "sme"],
        "eligible_countries": "pl, lt",
        "min_request": "0",
        "max_request": "50000",
        "duration_months": "6",
        "opens_on": today.isoformat(),
        "closes_on": (today + timedelta(days=90)).isoformat(),
        "first_cutoff": (today + timedelta(days=14)).isoformat(),
        "cutoff_every_days": "14",
        "decision_within_working_days": "10",
        "budgets-0-resource_id": str(g.gpu.id),
        "budgets-0-hours": "100000",
        "budgets-1-resource_id": "0",
        "budgets-1-hours": "",
        "budgets-2-resource_id": "0",
        "budgets-2-hours": "",
        "questions": '[{"key": "software", "label": "Software stack", "type": "text", "required": true}]',
        "criteria": "[]",
        "reason": "The spring round agreed with the board",
    }
    data.update(overrides)
    return data


def test_an_admin_creates_a_call_and_its_manager_opens_it(g, db, login):
    assert g.pi_client.get("/admin/calls/new").status_code == 403
    admin_client, _admin = logged_in(g.app, login, db, "Ada", FactoryRole.ADMIN)
    assert admin_client.get("/admin/calls/new").status_code == 200
    assert "Create a call" in text(admin_client.get("/calls"))

    def create(**overrides: Any):
        return post_form(admin_client, "/admin/calls/new", call_form(g, **overrides), page="/admin/calls/new")

    bad_json = create(questions="[{not json")
    assert bad_json.status_code == 422 and "Not valid JSON" in text(bad_json)
    bad_question = create(questions='[{"key": "x", "type": "essay"}]')
    assert bad_question.status_code == 422 and "is incomplete" in text(bad_question)
    weights = create(review_mode="peer_review", criteria='[{"key": "a", "label": "A", "weight": 60}]')
    assert weights.status_code == 422
    assert "Peer review criteria weights must add up to 100." in text(weights)
    no_budget = create(**{"budgets-0-resource_id": "0", "budgets-0-hours": ""})
    assert no_budget.status_code == 422 and "Give at least one resource a budget." in text(no_budget)
    stranger = create(manager_email="nobody@example.eu")
    assert stranger.status_code == 422 and "No user with the e-mail address nobody@example.eu" in text(stranger)
    dates = create(closes_on=(date.today() - timedelta(days=1)).isoformat())  # closing on the opening day is fine
    assert dates.status_code == 422 and "The call must close after it opens." in text(dates)
    assert db.exec(select(Call).where(Call.title == "Spring Fast Lane")).first() is None

    created = create()
    assert created.status_code == 302
    call = db.exec(select(Call).where(Call.title == "Spring Fast Lane")).one()
    assert created.headers["Location"] == f"/calls/{call.id}/manage"
    # "Closes on D" means the end of D in the call's time zone, and the pages say so
    assert call.closes_at == grants.end_of_day(date.today() + timedelta(days=90))
    assert call.opens_at == grants.start_of_day(date.today())
    assert (call.state, call.manager_id, call.eligible_countries) == (CallState.DRAFT, g.manager.id, ["PL", "LT"])
    assert (call.max_request, call.cutoff_every_days, call.eligible_kinds) == (50_000 * HOUR, 14, ["university", "sme"])
    budget = db.exec(select(CallBudget).where(CallBudget.call_id == call.id)).one()
    assert budget.budget == 100_000 * HOUR
    assert "Spring Fast Lane" not in text(g.pi_client.get("/calls"))

    assert (
        post_form(
            g.manager_client, f"/calls/{call.id}/state", {"state": "open", "reason": "Ready to take applications"}
        ).status_code
        == 302
    )
    assert "Spring Fast Lane" in text(g.pi_client.get("/calls"))
    assert post_form(g.pi_client, f"/calls/{call.id}/state", {"state": "closed"}).status_code == 403
    assert (
        post_form(
            g.manager_client, f"/calls/{call.id}/state", {"state": "closed", "reason": "Budget spent"}
        ).status_code
        == 302
    )
    db.expire_all()
    assert db.get(Call, call.id).state == CallState.CLOSED


def test_the_standing_calls_are_created_once_and_open_for_a_year(db):
    from tests.ledger_world import person

    world = make_world(db)
    manager = person(db, "Manager")
    first = ensure_default_calls(db, manager, [world.gpu], reason="test setup")
    again = ensure_default_calls(db, manager, [world.gpu], reason="test setup")
    assert [c.id for c in first] == [c.id for c in again]
    assert len(db.exec(select(Call)).all()) == 3
    playground, fast, large = first
    assert (playground.review_mode, playground.max_request, playground.duration_months) == (
        ReviewMode.AUTOMATIC,
        2_000 * HOUR,
        3,
    )
    assert (fast.review_mode, fast.max_request, fast.cutoff_every_days, fast.decision_within_working_days) == (
        ReviewMode.TECHNICAL,
        50_000 * HOUR,
        14,
        10,
    )
    assert large.review_mode == ReviewMode.PEER_REVIEW and large.min_request == 50_000 * HOUR
    assert sum(c["weight"] for c in large.criteria) == 100
    now = datetime.now(UTC)
    assert {c.id for c in grants.open_calls(db, now)} == {c.id for c in first}
    assert all(c.closes_at >= now + timedelta(days=364) for c in first)
    cutoff = grants.next_cutoff(fast, now)
    assert cutoff == grants.local_day(now) + timedelta(days=14)
    assert grants.decision_due(fast, cutoff) == cutoff + timedelta(days=14)  # ten working days: two weeks
    budgets = db.exec(select(CallBudget).where(CallBudget.call_id == fast.id)).all()
    assert [(b.resource_id, b.budget) for b in budgets] == [(world.gpu.id, 1_000_000 * HOUR)]


def test_an_unknown_application_or_review_is_a_plain_404(g, db):
    for path in ("/applications/987654", "/applications/987654/edit", "/reviews/987654", "/files/987654"):
        response = g.pi_client.get(path)
        assert response.status_code == 404, path
    assert post_form(g.pi_client, "/inbox/987654/read").status_code == 404
    users = db.exec(select(User)).all()
    assert users  # the world is there; only the objects are missing
