"""The call manager's and the reviewers' pages in Polish and Estonian: every message of their templates, views and
forms comes from the catalogue, states and kinds are shown in words (never the stored value), and dates and
scores are written the locale's way."""

from __future__ import annotations

import html
import re
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from babel.messages.pofile import read_po
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session

from portal import formatting
from portal.grants import services as grants
from portal.grants.models import ReviewKind
from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.projects import services as projects
from tests.conftest import csrf_token
from tests.grants_world import login_of, make_call, plan_capacity_from_today, staff
from tests.ledger_world import HOUR, make_world

REPO = Path(__file__).resolve().parents[2]
#: The files whose messages these pages show (issue 14: the call manager's and the reviewers' side of grants).
FILES = (
    "portal/templates/grants/application.html",
    "portal/templates/grants/manage.html",
    "portal/templates/grants/review.html",
    "portal/templates/grants/reviews.html",
    "portal/templates/grants/_macros.html",
    "portal/templates/grants/new_call.html",
    "portal/templates/grants/output_form.html",
    "portal/templates/grants/_project_research.html",
    "portal/templates/grants/_research_macros.html",
    "portal/grants/views/manager.py",
    "portal/grants/views/reviewer.py",
    "portal/grants/views/admin.py",
    "portal/grants/views/outputs.py",
    "portal/grants/views/common.py",
    "portal/grants/forms.py",
)


def english_sentences() -> set[str]:
    """The catalogue's messages from ``FILES`` that are sentences or phrases of three words or more, without
    placeholders: none of them may be left in English on a translated page."""
    with (REPO / "portal" / "translations" / "messages.pot").open("rb") as handle:
        catalogue = read_po(handle)
    found = set()
    for message in catalogue:
        if not message.id or isinstance(message.id, tuple) or "%" in message.id:
            continue
        if any(path in FILES for path, _line in message.locations) and len(message.id.split()) >= 3:
            found.add(message.id)
    return found


def page(client: FlaskClient, path: str, language: str) -> str:
    response = client.get(path, headers={"Accept-Language": language})
    assert response.status_code == 200, path
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def english_left(text: str) -> list[str]:
    return sorted(m for m in english_sentences() if m in text or html.escape(m) in text)


@pytest.fixture
def w(app: Flask, db: Session, login, settings) -> SimpleNamespace:
    """A peer-review call whose application passed the technical assessment and waits for a scientific review
    due in ten days; its manager, the scientific reviewer, the applicant and an administrator are logged in, none
    has chosen a language."""
    manager_client, reviewer_client, pi_client, admin_client = (app.test_client() for _ in range(4))
    manager = login(manager_client, given_name="Mona")
    admin = login(admin_client, given_name="Ada")
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    reviewer = login(reviewer_client, given_name="Rasa")
    grant_role(db, None, reviewer, FactoryRole.REVIEWER, reason="test setup")
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Olev")
    world = make_world(db)
    plan_capacity_from_today(db, world.gpu)
    call = make_call(db, world.gpu.id, manager, title="Large Scale spring call")
    pi = login(pi_client, given_name="Paula")
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    application = grants.start_application(db, pi, login_of(pi), call=call, project=project, title="Speech models")
    grants.save_draft(
        db,
        pi,
        application,
        abstract="Train ASR models for Lithuanian.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(world.gpu.id, 200 * HOUR, "Three models, ten days each")],
    )
    grants.submit(db, settings, pi, login_of(pi), application)
    grants.administrative_check(db, settings, manager, application, passed=True)
    tech = grants.assign_reviewer(db, settings, manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, tech.id, comment_to_applicant="Runs well on H100.", feasible=True)
    grants.complete_technical_assessment(db, settings, manager, application)
    due = date.today() + timedelta(days=10)
    review = grants.assign_reviewer(
        db, settings, manager, application, reviewer, kind=ReviewKind.SCIENTIFIC, due_on=due
    )
    return SimpleNamespace(
        manager_client=manager_client,
        reviewer_client=reviewer_client,
        pi_client=pi_client,
        admin_client=admin_client,
        project=project,
        call=call,
        application=application,
        review=review,
        due=due,
    )


def test_the_catalogue_holds_the_grant_pages_sentences() -> None:
    sentences = english_sentences()
    assert "Declare a conflict of interest" in sentences and "Nobody has asked you for a review yet." in sentences


def test_the_call_managers_pages_are_in_polish(w) -> None:
    dashboard = page(w.manager_client, f"/calls/{w.call.id}/manage", "pl")
    assert '<html lang="pl">' in dashboard
    assert "<h1>Zarządzanie: Large Scale spring call</h1>" in dashboard
    assert "Wnioski według stanu" in dashboard and "łącznie" in dashboard and "Otwórz nabór" not in dashboard
    assert "Zamknij nabór" in dashboard and "Pobierz wnioski (CSV)" in dashboard
    assert '<span class="state state-peer_review">recenzja naukowa</span>' in dashboard  # the state in words
    assert "Dlaczego? (zapisywane w dzienniku audytu)" in dashboard  # the form's label, from forms.py
    opens = formatting.date(grants.local_day(w.call.opens_at), locale="pl")
    assert f"od {opens} do końca dnia" in dashboard
    assert english_left(dashboard) == []

    application = page(w.manager_client, f"/applications/{w.application.id}", "pl")
    assert "Opiekun naboru" in application and "Przydziel recenzenta" in application
    assert "Rodzaj recenzji" in application and "Recenzja naukowa (recenzent)" in application
    assert "<td>naukowa</td><td>przydzielona</td>" in application  # kind and state of the review, in words
    assert f'<td class="date">{formatting.date(w.due, locale="pl")}</td>' in application
    assert "Złożona wersja 1" in application and "Wnioskowany czas obliczeniowy" in application
    assert english_left(application) == []


def test_the_reviewers_pages_are_in_polish(w) -> None:
    listing = page(w.reviewer_client, "/reviews", "pl")
    assert "<h1>Twoje recenzje</h1>" in listing
    assert "<td>naukowa</td><td>przydzielona</td>" in listing
    assert formatting.date(w.due, locale="pl") in listing and w.due.isoformat() not in listing
    assert english_left(listing) == []

    review = page(w.reviewer_client, f"/reviews/{w.review.id}", "pl")
    assert "Oceń każde kryterium od 1 (słabo) do 5 (doskonale)." in review
    assert "(waga 50 %)" in review  # a criterion's label: the call's own words, the weight in Polish
    assert "Komentarz dla wnioskodawcy (widoczny bez Twojego nazwiska)" in review
    assert "Złóż recenzję" in review and "Zgłoś konflikt interesów" in review
    assert '<dd id="review-state">przydzielona</dd>' in review
    assert english_left(review) == []


def test_the_same_pages_are_in_estonian(w) -> None:
    dashboard = page(w.manager_client, f"/calls/{w.call.id}/manage", "et")
    assert "Taotlused oleku järgi" in dashboard and "Eelarve" in dashboard
    assert english_left(dashboard) == []
    application = page(w.manager_client, f"/applications/{w.application.id}", "et")
    assert "Taotlusvooru haldur" in application and "Määra hindaja" in application
    assert english_left(application) == []
    listing = page(w.reviewer_client, "/reviews", "et")
    assert "<h1>Teie hindamised</h1>" in listing and formatting.date(w.due, locale="et") in listing
    review = page(w.reviewer_client, f"/reviews/{w.review.id}", "et")
    assert "Deklareeri huvide konflikt" in review and "Esita hindamine" in review
    assert english_left(listing) == [] and english_left(review) == []


def test_creating_a_call_is_in_polish_down_to_the_fields_messages(w) -> None:
    form = page(w.admin_client, "/admin/calls/new", "pl")
    assert "<h1>Utwórz nabór wniosków</h1>" in form
    assert "Uczelnia lub instytut badawczy" in form and "6 miesięcy" in form and "12 miesięcy" in form
    assert "Automatycznie: godziny przyznawane po pozytywnej kontroli kwalifikowalności" in form
    assert english_left(form) == []

    token = csrf_token(w.admin_client, "/admin/calls/new")
    refused = w.admin_client.post(
        "/admin/calls/new",
        data={"csrf_token": token, "title": "", "eligible_countries": "Polska", "max_request": "10"},
        headers={"Accept-Language": "pl"},
    )
    assert refused.status_code == 422
    body = refused.get_data(as_text=True)
    assert "Nadaj naborowi tytuł." in body and "Wpisz adres e-mail opiekuna naboru." in body
    assert "Podaj dzień otwarcia naboru." in body and "This field is required." not in body


def test_a_projects_outputs_are_listed_in_polish(w) -> None:
    project_page = page(w.pi_client, f"/projects/{w.project.id}", "pl")
    assert '<h2 id="outputs-h">Wyniki</h2>' in project_page and "Nie dodano jeszcze żadnych wyników." in project_page
    assert "Opis bibliograficzny" in project_page and "Zbiór danych" in project_page
    token = csrf_token(w.pi_client, f"/projects/{w.project.id}/outputs/new")
    added = w.pi_client.post(
        f"/projects/{w.project.id}/outputs",
        data={"csrf_token": token, "kind": "dataset", "citation": "Baltic speech corpus, 2026.", "year": "2026"},
        headers={"Accept-Language": "pl"},
    )
    assert added.status_code == 302
    listed = page(w.pi_client, f"/projects/{w.project.id}", "pl")
    assert "Zbiór danych został dodany do wyników projektu." in listed  # the flash, in the page's language
    assert '<td data-label="Rodzaj">Zbiór danych</td>' in listed  # the kind in words, not "dataset"
    assert english_left(listed) == []


def test_english_stays_the_default(w) -> None:
    listing = page(w.reviewer_client, "/reviews", "de-DE")
    assert "<h1>Your reviews</h1>" in listing and "<td>scientific</td><td>assigned</td>" in listing
    assert formatting.date(w.due) in listing
    dashboard = page(w.manager_client, f"/calls/{w.call.id}/manage", "en")
    assert {"Applications by state", "Download the applications (CSV)"} <= set(english_left(dashboard))
