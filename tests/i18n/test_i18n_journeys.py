"""Issue 14, done: a Polish, Lithuanian, Latvian or Estonian user buys hours, applies to a call, reviews, joins a
course and starts a notebook without meeting an English sentence. Each journey is walked with the test client,
page by page, form refusal by form refusal, flash by flash, and every answer along the way is checked: no
English message of the catalogue left on it (``english_left``, over every file of the portal), none of the
English that comes from outside the catalogue (the libraries' own messages, what the portal stores in English),
and the page in the reader's language."""

from __future__ import annotations

import functools
import html
import re
from datetime import date, timedelta
from types import SimpleNamespace

import pytest
from babel.messages.pofile import read_po
from flask import Flask
from flask.testing import FlaskClient
from portal_standin.devstack import free_port
from sqlmodel import Session, select

from portal import create_app, formatting
from portal.compute.services import check_spawn, hub_username
from portal.config import Settings
from portal.db import utcnow
from portal.grants import services as grants
from portal.grants.models import Application, Review, ReviewKind, ReviewState
from portal.i18n import compile_catalogues
from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import AllocationSource, ResourceKind
from portal.market.models import Order, OrderState
from portal.messages import Amount
from portal.projects import services as projects
from portal.projects.models import ProjectMembership, ProjectRole
from tests import i18n_checks
from tests.conftest import csrf_token
from tests.factories import cpu_project, open_now, person, plan_capacity_around_now, running_course
from tests.grants_world import login_of, make_call, plan_capacity_from_today, staff
from tests.ledger_world import HOUR, make_world
from tests.market.test_market import fresh, pay, shop, wait_for

#: The fixture of tests/market/test_market.py (the portal served over HTTP for Stripe's webhooks, a verified LT company
#: whose admin is logged in, "H100 hours" on sale at 2.50 EUR an hour).
__all__ = ["shop"]

LANGUAGES = ("pl", "lt", "lv", "et")
#: Every file whose messages are in the catalogue: a journey crosses many packages' pages.
EVERY_FILE = re.compile(r"^portal/")
#: English a page could show that is not (or not as such) in the catalogue: the libraries' own messages (WTForms,
#: Flask-WTF's CSRF checks, Werkzeug), and what the portal stores in English (a purchase's title, "order 12").
STRAY_ENGLISH = re.compile(
    r"This field is required|Not a valid|CSRF|The referrer|Purchase: |Course: |>order \d|refund of order"
    r"|No such allocation|must be a positive whole number|more than any resource has|Invalid Choice"
    r"|Field must be|Number must be|Field cannot be|could not be reached|Max retries|Connection refused|Traceback"
)
#: Part of what each language says in the journeys (so that a page in English, or in another language, fails).
WORDS = {
    "pl": {"purchase": "Zakup: H100 hours", "order": "zamówienie", "submitted": "złożony"},
    "lt": {"purchase": "Pirkinys: H100 hours", "order": "užsakymas", "submitted": "pateikta"},
    "lv": {"purchase": "Pirkums: H100 hours", "order": "pasūtījums", "submitted": "iesniegts"},
    "et": {"purchase": "Ost: H100 hours", "order": "tellimus", "submitted": "esitatud"},
}
#: What no reader reads on a page: its addresses (``/organisations/3/billing``) and its hidden fields.
ADDRESS = re.compile(r'\b(?:href|action|formaction|src|hx-get|hx-post)="[^"]*"|<input type="hidden"[^>]*>')


def browser(app: Flask, language: str) -> FlaskClient:
    """A browser whose ``Accept-Language`` asks for ``language``."""
    client = app.test_client()
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = language
    return client


def read(response, language: str, status: int = 200, *, whole_page: bool = True) -> str:
    """The answer's text, after checking its status and that it says nothing in English."""
    text = html.unescape(response.get_data(as_text=True))
    assert response.status_code == status, (response.status_code, text[:2000])
    if whole_page:
        assert f'<html lang="{language}">' in text, text[:300]
    readable = ADDRESS.sub("", text)
    left = english_left(readable, language)
    assert not left, f"English messages on {response.request.path}: {[where(readable, m) for m in left]}"
    stray = sorted({m.group(0) for m in STRAY_ENGLISH.finditer(text)})
    assert not stray, f"English from outside the catalogue on {response.request.path}: {stray}"
    return re.sub(r"[ \t\r\n]+", " ", text)


@functools.cache
def _kept_in(language: str) -> frozenset[str]:
    """The messages whose translation keeps their English words ("Baltic AI Factory portal" in "... portalas"):
    finding those words on a page says nothing about the language it is in."""
    with (i18n_checks.TRANSLATIONS / language / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalogue = read_po(handle, locale=language)
    kept = set()
    for message in catalogue:
        if message.id and isinstance(message.id, str) and isinstance(message.string, str):
            fixed = max(i18n_checks.PLACEHOLDER.split(message.id), key=len).strip()
            if fixed in message.string:
                kept.add(message.id)
    return frozenset(kept)


def english_left(text: str, language: str) -> list[str]:
    """The catalogue's English messages (of every file of the portal) still in ``text``."""
    return [m for m in i18n_checks.english_left(text, language, EVERY_FILE) if m not in _kept_in(language)]


def where(text: str, message: str) -> str:
    """``message`` in its context on the page, for the failure's explanation."""
    fixed = max(i18n_checks.PLACEHOLDER.split(message), key=len).strip()
    at = text.find(fixed)
    return text[max(at - 80, 0) : at + len(fixed) + 80]


def send(client: FlaskClient, path: str, data: dict | None = None, *, page: str, **kwargs):
    """A form sent the way a browser sends it: with the CSRF token of the page it is on."""
    return client.post(path, data={"csrf_token": csrf_token(client, page), **(data or {})}, **kwargs)


def problem(response, language: str, status: int) -> dict:
    assert response.status_code == status and response.mimetype == "application/problem+json", response.data
    body = response.get_json()
    said = " ".join(str(v) for v in (body["title"], body["detail"], *body.get("errors", {}).values()))
    assert not english_left(said, language) and not STRAY_ENGLISH.search(said), body
    return body


# --- buying hours ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_buying_hours_from_the_catalogue_to_the_paid_allocation(shop, db: Session, language: str) -> None:
    client = shop.client
    # the language chosen with the switch: saved on the account, so no Accept-Language is needed
    chosen = send(client, "/language", {"language": language, "next": "/market"}, page="/market")
    assert chosen.status_code == 302
    catalogue = read(client.get("/market"), language)
    assert f"/market/offerings/{shop.offering.id}/order" in catalogue

    order_page = f"/market/offerings/{shop.offering.id}/order"
    read(client.get(order_page), language)
    quote = f"/market/offerings/{shop.offering.id}/quote?project_id={shop.project.id}&quantity=40"
    read(client.get(quote), language, whole_page=False)
    read(client.get(f"/market/offerings/{shop.offering.id}/quote?quantity=100000"), language, whole_page=False)

    # a quantity the offering does not sell, then a form without its token: both refused in the language
    refused = send(client, order_page, {"project_id": shop.project.id, "quantity": 100_000}, page=order_page)
    read(refused, language, 422)
    read(client.post(order_page, data={"project_id": shop.project.id, "quantity": 40}), language, 400)
    forged = {"csrf_token": "forged.token", "project_id": shop.project.id, "quantity": 40}
    read(client.post(order_page, data=forged), language, 400)
    stranger = shop.app.test_client()  # a token from another browser's session
    foreign = {"csrf_token": csrf_token(stranger, "/market"), "project_id": shop.project.id, "quantity": 40}
    read(client.post(order_page, data=foreign), language, 400)

    placed = send(client, order_page, {"project_id": shop.project.id, "quantity": 40}, page=order_page)
    assert placed.status_code == 303, placed.get_data(as_text=True)
    order = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    read(client.get(f"/market/orders/{order.id}?cancelled=1"), language)  # back from Stripe without paying
    pay(placed.headers["Location"])
    wait_for("payment", lambda: fresh(db, Order, order.id).state == OrderState.PAID)

    paid = read(client.get(f"/market/orders/{order.id}"), language)
    assert formatting.money(10_000, "EUR", locale=language) in paid
    read(client.get(f"/organisations/{shop.org.id}/billing"), language)
    read(client.get("/market/purchases"), language)

    # the allocation the order bought: its title and its first entry are the portal's words, in the language
    allocation = f"/projects/{shop.project.id}/allocations/{fresh(db, Order, order.id).allocation_id}"
    bought = read(client.get(allocation), language)
    assert f"<h1>{WORDS[language]['purchase']}</h1>" in bought
    assert f"<td>{WORDS[language]['order']} {order.id}</td>" in bought
    project = read(client.get(f"/projects/{shop.project.id}"), language)
    assert WORDS[language]["purchase"] in project
    notebooks = read(client.get(f"/projects/{shop.project.id}/notebooks"), language)
    assert WORDS[language]["purchase"] in notebooks  # the allocation to start a notebook on, by its title
    # a notebook on the bought hours is named after them
    options = {"allocation": fresh(db, Order, order.id).allocation_id, "profile": "1x-h100", "hours": 1}
    session = check_spawn(db, shop.settings, hub_username(shop.buyer), "n1", options).session
    assert WORDS[language]["purchase"] in read(client.get(f"/notebooks/{session.id}"), language)
    assert WORDS[language]["purchase"] in read(client.get("/notebooks"), language)

    # a refusal through the API follows Accept-Language
    api = shop.app.test_client()
    problem(api.get("/api/v1/projects", headers={"Accept-Language": language}), language, 401)


# --- applying to a call ----------------------------------------------------------------------------------------


@pytest.fixture
def grant_world(app: Flask, db: Session, login) -> SimpleNamespace:
    """An open peer-review call for H100 hours planned from today, and its manager."""
    world = make_world(db)
    plan_capacity_from_today(db, world.gpu)
    manager = person(db, "Mona")
    call = make_call(db, world.gpu.id, manager, title="Baltic spring call")
    return SimpleNamespace(world=world, manager=manager, call=call)


@pytest.mark.parametrize("language", LANGUAGES)
def test_applying_from_the_calls_to_the_submitted_application(
    app: Flask, db: Session, login, grant_world, language: str
) -> None:
    client = browser(app, language)
    pi = login(client, given_name="Paula")
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    call = grant_world.call

    read(client.get("/calls"), language)
    call_page = f"/calls/{call.id}"
    read(client.get(call_page), language)
    untitled = send(client, f"{call_page}/apply", {"project_id": project.id, "title": ""}, page=call_page)
    read(untitled, language, 422)
    started = send(
        client,
        f"{call_page}/apply",
        {"project_id": project.id, "title": "Speech models"},
        page=call_page,
        follow_redirects=True,
    )
    read(started, language)  # the editor, with the flash that the draft is created
    application = db.exec(select(Application).where(Application.project_id == project.id)).one()
    editor = f"/applications/{application.id}/edit"
    gpu = grant_world.world.gpu.id

    # an answer that is no number, then submitting what is still incomplete: both refused, nothing submitted
    wrong = send(client, editor, {"title": "Speech models", "q_1": "many", f"hours_{gpu}": "lots"}, page=editor)
    read(wrong, language, 422)
    autosaved = send(client, f"/applications/{application.id}/save", {"title": "Speech", "q_1": "x"}, page=editor)
    read(autosaved, language, whole_page=False)
    incomplete = send(client, f"/applications/{application.id}/submit", page=editor)
    read(incomplete, language, 422)

    complete = {
        "title": "Speech models",
        "abstract": "Train ASR models for Baltic languages.",
        "q_0": "PyTorch",
        "q_1": "8",
        "q_2": "",
        f"hours_{gpu}": "100",
        f"justification_{gpu}": "Three models, ten days each",
        "co_applicants": "",
    }
    submitted = send(client, f"/applications/{application.id}/submit", complete, page=editor, follow_redirects=True)
    page = read(submitted, language)
    assert WORDS[language]["submitted"] in page and fresh(db, Application, application.id).version == 1
    read(client.get("/"), language)  # the dashboard with the draft gone and the application listed


# --- reviewing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_reviewing_from_the_list_to_the_submitted_scores(
    app: Flask, db: Session, login, settings: Settings, grant_world, language: str
) -> None:
    reviewer_client = browser(app, language)
    reviewer = login(reviewer_client, given_name="Rasa")
    grant_role(db, None, reviewer, FactoryRole.REVIEWER, reason="test setup")
    manager, call, gpu = grant_world.manager, grant_world.call, grant_world.world.gpu
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Olev")
    pi = person(db, "Paula")
    org = projects.create_organisation(db, pi, name="Tartu Uni", kind="university", country="EE")
    project = projects.create_project(db, pi, org, title="Estonian speech")
    application = grants.start_application(db, pi, login_of(pi), call=call, project=project, title="Speech models")
    grants.save_draft(
        db,
        pi,
        application,
        abstract="Train ASR models.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(gpu.id, 200 * HOUR, "Three models, ten days each")],
    )
    grants.submit(db, settings, pi, login_of(pi), application)
    grants.administrative_check(db, settings, manager, application, passed=True)
    tech = grants.assign_reviewer(db, settings, manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, tech.id, comment_to_applicant="Runs well on H100.", feasible=True)
    grants.complete_technical_assessment(db, settings, manager, application)
    review = grants.assign_reviewer(
        db, settings, manager, application, reviewer, kind=ReviewKind.SCIENTIFIC, due_on=date.today() + timedelta(10)
    )

    read(reviewer_client.get("/reviews"), language)
    page = f"/reviews/{review.id}"
    read(reviewer_client.get(page), language)
    # scores missing and one out of range: refused, saying so in the language
    refused = send(reviewer_client, page, {"score_0": "9", "comment_to_applicant": ""}, page=page)
    read(refused, language, 422)
    scores = {"score_0": "4", "score_1": "5", "score_2": "3", "comment_to_applicant": "Solid plan."}
    done = send(reviewer_client, page, {**scores, "comment_to_panel": "Fund it."}, page=page, follow_redirects=True)
    read(done, language)
    assert fresh(db, Review, review.id).state == ReviewState.SUBMITTED
    read(reviewer_client.get("/reviews"), language)
    read(reviewer_client.get("/inbox"), language)  # the notice of the assignment, in the reader's language


# --- joining a course ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_joining_a_course_from_the_link_to_the_students_page(make_settings, db: Session, login, language: str) -> None:
    app = create_app(make_settings(hub_url=f"http://127.0.0.1:{free_port()}"))  # a hub that does not answer
    settings = app.extensions["portal.settings"]
    teacher_client = browser(app, language)
    teacher = login(teacher_client, given_name="Tiina")
    _world, _project, parent = cpu_project(db, teacher, hours=500, title="Teaching")
    course = running_course(db, settings, teacher, parent.id, title="Parallel Python")
    student = browser(app, language)
    login(student, given_name="Sten")

    read(student.get(f"/courses/join?code={course.join_code}"), language)
    read(send(student, "/courses/join", {"code": ""}, page="/courses/join"), language, 422)
    unknown = send(student, "/courses/join", {"code": "NOSUCHCODE"}, page="/courses/join")
    assert unknown.status_code in (404, 422)
    read(unknown, language, unknown.status_code)
    joined = send(student, "/courses/join", {"code": course.join_code}, page="/courses/join", follow_redirects=True)
    mine = read(joined, language)
    assert formatting.quantity(10 * HOUR, ResourceKind.CPU, locale=language) in mine
    read(student.get("/courses"), language)
    # starting the course's notebook: no hours asked for, then no hub answering (this portal's is not running)
    page = f"/courses/{course.id}"
    no_hours = send(student, f"{page}/notebooks", {"profile": "cpu", "hours": "abc"}, page=page)
    read(no_hours, language, 422)
    unreachable = send(student, f"{page}/notebooks", {"profile": "cpu", "hours": "1"}, page=page)
    read(unreachable, language, 503)
    again = send(student, "/courses/join", {"code": course.join_code}, page="/courses/join", follow_redirects=True)
    read(again, language, again.status_code)  # joining twice: the portal says so
    # the teacher's page and the allocations it moved, in the language too
    read(teacher_client.get(f"/courses/{course.id}"), language)
    read(teacher_client.get(f"/projects/{parent.project_id}/allocations/{parent.id}"), language)
    app.extensions["portal.engine"].dispose()


# --- starting a notebook ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_starting_a_notebook_from_the_form_to_the_portals_answer(
    make_settings, db: Session, login, language: str
) -> None:
    # no hub answers: the portal's own refusals and its page for a notebook it asked the hub for
    app = create_app(make_settings(hub_local_gpus=[], hub_url=f"http://127.0.0.1:{free_port()}"))
    world = make_world(db)
    cpu = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, cpu, 100_000 * HOUR)
    plan_capacity_around_now(db, world.gpu, 100_000 * HOUR)
    gpu_allocation = open_now(db, world.project, world.gpu, 100)
    cpu_allocation = open_now(db, world.project, cpu, 10)
    client = browser(app, language)
    member = login(client, given_name="Ilze")
    db.add(ProjectMembership(project_id=world.project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.commit()
    form = f"/projects/{world.project.id}/notebooks"

    read(client.get(form), language)
    read(client.get(f"{form}?allocation_id={gpu_allocation.id}"), language)
    read(client.get(f"{form}/profiles?allocation_id={cpu_allocation.id}"), language, whole_page=False)
    # the portal's own refusals, before it asks the hub: no hours, an unknown profile, an allocation not started
    no_hours = {"allocation_id": cpu_allocation.id, "profile": "cpu", "hours": "0"}
    read(send(client, form, no_hours, page=form), language, 422)
    unknown = {"allocation_id": cpu_allocation.id, "profile": "no-such-profile", "hours": "1"}
    read(send(client, form, unknown, page=form), language, 422)
    later = ledger.open_allocation(
        db,
        None,
        project=world.project,
        resource=cpu,
        amount=10 * HOUR,
        starts_at=utcnow() + timedelta(days=2),
        ends_at=utcnow() + timedelta(days=20),
        source=AllocationSource.AWARD,
        title="Next month",
    )
    not_yet = send(client, form, {"allocation_id": later.id, "profile": "cpu", "hours": "1"}, page=form)
    read(not_yet, language, not_yet.status_code)
    assert not_yet.status_code in (403, 409, 422)
    unreachable = send(client, form, {"allocation_id": cpu_allocation.id, "profile": "cpu", "hours": "1"}, page=form)
    read(unreachable, language, 503)

    options = {"allocation": cpu_allocation.id, "profile": "cpu", "hours": 1}
    session = check_spawn(db, app.extensions["portal.settings"], hub_username(member), "n1", options).session
    read(client.get(f"/notebooks/{session.id}"), language)
    read(client.get("/notebooks"), language)
    app.extensions["portal.engine"].dispose()


# --- what the portal stores in English ---------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_what_the_portal_writes_on_allocations_and_entries_is_read_in_the_readers_language(language: str) -> None:
    compile_catalogues()  # as the portal does when it starts (no app is started here)
    for stored in wording.WORDINGS:
        values = {
            name: Amount(4711 * HOUR + n * 360, ResourceKind.GPU) if name in wording.AMOUNTS else str(4711 + n)
            for n, name in enumerate(re.findall(r"%\((\w+)\)s", stored.message))
        }
        english = stored.english(**values)
        shown = wording.shown(english, (stored,), language)
        said = [value.render(language) if isinstance(value, Amount) else value for value in values.values()]
        assert shown != english and all(value in shown for value in said), (stored.message, shown)
        assert wording.shown(english, (stored,), "en") == english  # English readers read what is stored
    # what a person wrote is shown as written, whatever it looks like
    assert wording.shown("Q1 award", wording.REASONS, language) == "Q1 award"
    assert wording.title_shown("Purchase: H100 hours", "award", language) == "Purchase: H100 hours"
    assert wording.title_shown("Purchase: H100 hours", "purchase", language) == WORDS[language]["purchase"]
