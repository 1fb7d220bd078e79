"""The application form (issue 13, time to science): the editor shows hours only for the sites the applicant
ticks, with JavaScript (an htmx swap) and without (a button); its error summary names and links each field; the
smallest request a call states is the smallest it accepts; drafts wait on the dashboard."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from portal.grants import services as grants
from portal.grants.catalogue import ensure_default_calls
from portal.grants.models import Application, ApplicationState, Call, ResourceRequest
from portal.ledger import services as ledger
from portal.ledger.models import ResourceKind
from portal.projects import services as projects
from tests.conftest import post_form
from tests.factories import person
from tests.grants import test_browser_grants
from tests.grants.test_browser_grants import person_in_browser
from tests.grants_world import login_of, plan_capacity_from_today
from tests.journeys import test_browser as harness
from tests.journeys.test_browser import assert_accessible
from tests.ledger_world import HOUR

# The browser harness's fixtures, for the one test in a real browser.
browser = harness.browser
new_page = harness.new_page
grants_portal = test_browser_grants.portal

SITES = (
    ("krk", "Kraków AI Centre", "Kraków"),
    ("vno", "Vilnius AI Centre", "Vilnius"),
    ("tll", "Tallinn AI Centre", "Tallinn"),
)


def text(response) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def three_sites(db: Session) -> tuple[list, Call]:
    """H100 GPU-hours at three sites, capacity from today, and the standing calls on them: the Playground."""
    gpus = []
    for code, name, city in SITES:
        site = ledger.create_site(db, None, code=code, name=name, city=city, country="PL", reason="test setup")
        gpu = ledger.create_resource(
            db,
            None,
            site,
            code="h100",
            name="H100 GPU-hours",
            kind=ResourceKind.GPU,
            gpu_model="H100",
            reason="test setup",
        )
        plan_capacity_from_today(db, gpu)
        gpus.append(gpu)
    ensure_default_calls(db, person(db, "Manager"), gpus, reason="test setup")
    return gpus, db.exec(select(Call).where(Call.title == "Playground")).one()


@pytest.fixture
def pg(app: Flask, db: Session, login, client: FlaskClient) -> SimpleNamespace:
    """The Playground on three sites, and a logged-in PI of a university's project with a draft."""
    pi = login(client, given_name="Paula", family_name="Pietarinen")
    gpus, playground = three_sites(db)
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    application = grants.start_application(
        db, pi, login_of(pi), call=playground, project=project, title="Whisper for Lithuanian"
    )
    return SimpleNamespace(pi=pi, client=client, gpus=gpus, call=playground, project=project, application=application)


def editor(pg: SimpleNamespace) -> str:
    return f"/applications/{pg.application.id}/edit"


def hours_inputs(html: str) -> set[str]:
    return set(re.findall(r'<input[^>]*name="(hours_\d+)"', html))


def requested(db: Session, pg: SimpleNamespace) -> dict[int, int]:
    db.expire_all()
    rows = db.exec(select(ResourceRequest).where(ResourceRequest.application_id == pg.application.id)).all()
    return {r.resource_id: r.requested for r in rows}


def form(pg: SimpleNamespace, **fields: object) -> dict[str, object]:
    """The editor's fields as a browser posts them, with the sites' checkboxes on the page."""
    return {
        "title": "Whisper for Lithuanian",
        "abstract": "",
        "q_0": "",
        "q_1": "",
        "q_2": "",
        "sites_shown": "1",
        **fields,
    }


# --- only the sites ticked ------------------------------------------------------------------------------------


def test_the_editor_lists_the_sites_by_name_and_shows_no_hours_until_one_is_ticked(pg, db):
    page = pg.client.get(editor(pg))
    assert page.status_code == 200
    html = text(page)
    for _code, name, _city in SITES:
        assert f"{name}: H100 GPU-hours</label>" in html
    assert len(re.findall(r'<input(?=[^>]*type="checkbox")[^>]*name="sites"', html)) == 3
    assert hours_inputs(html) == set()
    assert "No site ticked yet." in html
    assert 'name="show_sites"' in html  # the button that adds the rows without JavaScript


def test_without_javascript_the_button_adds_the_rows_of_the_sites_ticked(pg, db):
    krk, vno, _tll = pg.gpus
    response = post_form(pg.client, editor(pg), form(pg, sites=[str(vno.id)], show_sites="1"), page=editor(pg))
    assert response.status_code == 302
    assert response.headers["Location"] == f"{editor(pg)}?site={vno.id}#requests"
    html = text(pg.client.get(response.headers["Location"]))
    assert hours_inputs(html) == {f"hours_{vno.id}"}
    assert re.search(rf'<input[^>]*checked[^>]*value="{vno.id}"|<input[^>]*value="{vno.id}"[^>]*checked', html)

    # Hours typed and saved: the row stays without the address naming it; the others stay hidden.
    response = post_form(
        pg.client,
        editor(pg),
        form(pg, sites=[str(vno.id)], **{f"hours_{vno.id}": "40", f"justification_{vno.id}": "Two runs"}),
        page=editor(pg),
    )
    assert response.status_code == 302 and response.headers["Location"] == editor(pg)
    assert requested(db, pg) == {vno.id: 40 * HOUR}
    assert hours_inputs(text(pg.client.get(editor(pg)))) == {f"hours_{vno.id}"}

    # Unticking a site takes its hours out of the application.
    response = post_form(pg.client, editor(pg), form(pg, sites=[str(krk.id)], show_sites="1"), page=editor(pg))
    assert response.status_code == 302
    assert requested(db, pg) == {}
    assert hours_inputs(text(pg.client.get(response.headers["Location"]))) == {f"hours_{krk.id}"}


def test_with_javascript_ticking_a_site_swaps_in_its_row_and_saves(pg, db):
    krk, vno, tll = pg.gpus
    post_form(
        pg.client,
        f"/applications/{pg.application.id}/save",
        form(pg, sites=[str(krk.id)], **{f"hours_{krk.id}": "12.5", f"justification_{krk.id}": "Tests"}),
        page=editor(pg),
        headers={"HX-Request": "true"},
    )
    assert requested(db, pg) == {krk.id: int(12.5 * HOUR)}
    html = text(pg.client.get(editor(pg)))
    assert f'hx-post="/applications/{pg.application.id}/sites"' in html

    # Ticking Tallinn too: its row comes back, Kraków's keeps what was typed, Vilnius stays hidden.
    swap = post_form(
        pg.client,
        f"/applications/{pg.application.id}/sites",
        form(pg, sites=[str(krk.id), str(tll.id)], **{f"hours_{krk.id}": "20", f"justification_{krk.id}": "Tests"}),
        page=editor(pg),
        headers={"HX-Request": "true"},
    )
    assert swap.status_code == 200
    rows = text(swap)
    assert rows.lstrip().startswith('<div id="request-rows">')
    assert hours_inputs(rows) == {f"hours_{krk.id}", f"hours_{tll.id}"}
    assert 'value="20"' in rows
    assert '<div id="save-status" hx-swap-oob="innerHTML">' in rows and "Saved" in rows
    assert requested(db, pg) == {krk.id: 20 * HOUR}

    # Unticking Kraków: its row goes and its hours are no longer asked for.
    swap = post_form(
        pg.client,
        f"/applications/{pg.application.id}/sites",
        form(pg, sites=[str(tll.id)], **{f"hours_{krk.id}": "20"}),
        page=editor(pg),
        headers={"HX-Request": "true"},
    )
    assert hours_inputs(text(swap)) == {f"hours_{tll.id}"}
    assert requested(db, pg) == {}
    assert vno.id not in requested(db, pg)


# --- errors named and linked ------------------------------------------------------------------------------------


def test_the_error_summary_names_and_links_each_field(pg, db):
    vno = pg.gpus[1]
    grants.save_draft(db, pg.pi, pg.application, requests=[grants.RequestInput(vno.id, 10 * HOUR, "")])
    response = post_form(pg.client, f"/applications/{pg.application.id}/submit", page=editor(pg))
    assert response.status_code == 422
    html = text(response)
    summary = html[html.index('id="error-summary"') : html.index("</div>", html.index('id="error-summary"'))]
    assert "The application is not complete yet. Nothing was submitted." in summary
    assert '<a href="#abstract">Abstract: Write a short abstract.</a>' in summary
    assert '<a href="#q_0">What will you try?: This question needs an answer.</a>' in summary
    assert (
        f'<a href="#justification_{vno.id}">Why H100 GPU-hours at Vilnius AI Centre: Justify the hours you ask for.</a>'
        in summary
    )
    items = re.findall(r"<li>(.*?)</li>", summary)
    assert items and all(item.startswith('<a href="#') for item in items)
    # no sentence stands alone without its field; each field carries its own message
    assert summary.count("This question needs an answer.") == 1
    (answer,) = re.findall(r'<(?:input|textarea)(?=[^>]*id="q_0")[^>]*>', html)
    assert 'aria-invalid="true"' in answer and re.search(r'aria-describedby="[^"]*\bq_0-error"', answer)
    assert '<p class="error" id="q_0-error">This question needs an answer.</p>' in html
    assert f'<p class="error" id="justification_{vno.id}-error">Justify the hours you ask for.</p>' in html


def test_a_request_with_no_site_links_to_the_requests(pg, db):
    response = post_form(pg.client, f"/applications/{pg.application.id}/submit", page=editor(pg))
    html = text(response)
    assert '<a href="#requests">Compute time requested: Ask for hours of at least one resource.</a>' in html
    assert 'id="requests" aria-describedby="requests-hint requests-error"' in html


# --- the smallest request ---------------------------------------------------------------------------------------


def test_the_smallest_request_a_call_states_is_the_smallest_it_accepts(pg, db):
    assert pg.call.min_request == 0  # the Playground is seeded "from 0"
    smallest = grants.smallest_request(pg.call, ResourceKind.GPU)
    assert smallest == HOUR
    stated = text(pg.client.get(f"/calls/{pg.call.id}"))
    assert '<dd id="call-requests">from 1 GPU-hours to 2,000 GPU-hours</dd>' in stated
    assert "from 0 GPU-hours" not in stated
    assert "In total this call takes requests from 1 GPU-hours to 2,000 GPU-hours." in text(pg.client.get(editor(pg)))

    vno = pg.gpus[1]
    grants.save_draft(
        db,
        pg.pi,
        pg.application,
        abstract="Speech recognition.",
        answers={"plan": "Fine-tune Whisper."},
        requests=[grants.RequestInput(vno.id, HOUR // 2, "A first try")],
    )
    below = post_form(pg.client, f"/applications/{pg.application.id}/submit", page=editor(pg))
    assert below.status_code == 422
    assert "This call takes requests between 1.0 GPU-hours and 2,000.0 GPU-hours" in text(below)

    grants.save_draft(db, pg.pi, pg.application, requests=[grants.RequestInput(vno.id, smallest, "A first try")])
    exactly = post_form(pg.client, f"/applications/{pg.application.id}/submit", page=editor(pg))
    assert exactly.status_code == 302
    db.expire_all()
    assert db.get(Application, pg.application.id).state != ApplicationState.DRAFT


# --- drafts on the dashboard --------------------------------------------------------------------------------------


def test_drafts_wait_on_the_dashboard_and_calls_links_there(pg, db):
    dashboard = text(pg.client.get("/"))
    section = dashboard[dashboard.index('id="drafts"') :]
    assert "Your draft applications" in section
    assert "Whisper for Lithuanian" in section and "Playground" in section
    assert f'href="{editor(pg)}">Continue<span class="visually-hidden"> Whisper for Lithuanian</span></a>' in section
    calls = text(pg.client.get("/calls"))
    assert '<p id="drafts-link"><a href="/#drafts">' in calls
    assert "Whisper for Lithuanian" not in calls  # no longer listed at the bottom

    # Submitted, it leaves the dashboard's drafts and is listed with the project's applications.
    grants.save_draft(
        db,
        pg.pi,
        pg.application,
        abstract="Speech recognition.",
        answers={"plan": "Fine-tune Whisper."},
        requests=[grants.RequestInput(pg.gpus[0].id, 10 * HOUR, "Runs")],
    )
    assert post_form(pg.client, f"/applications/{pg.application.id}/submit", page=editor(pg)).status_code == 302
    assert 'id="drafts"' not in text(pg.client.get("/"))
    calls = text(pg.client.get("/calls"))
    assert "Whisper for Lithuanian" in calls and 'id="drafts-link"' not in calls


# --- in the applicant's language ----------------------------------------------------------------------------------


def test_the_editor_the_call_and_the_drafts_read_in_polish(pg, db):
    polish = {"Accept-Language": "pl"}
    krk = pg.gpus[0]
    grants.save_draft(db, pg.pi, pg.application, requests=[grants.RequestInput(krk.id, 10 * HOUR, "")])
    page = text(pg.client.get(editor(pg), headers=polish))
    assert '<html lang="pl">' in page
    for words in ("Potrzebne ośrodki i zasoby", "Łącznie ten nabór przyjmuje wnioski od 1 godz. GPU", "Złóż wniosek"):
        assert words in page
    assert "Uzasadnienie: H100 GPU-hours, Kraków AI Centre" in page  # resource and site names are data
    for english in ("Compute time requested", "Sites and resources you need", "Submit the application", "Last saved"):
        assert english not in page

    refused = post_form(pg.client, f"/applications/{pg.application.id}/submit", page=editor(pg), headers=polish)
    summary = text(refused)
    assert "Wniosek nie jest jeszcze kompletny. Nic nie zostało złożone." in summary
    assert '<a href="#abstract">Streszczenie: ' in summary

    call = text(pg.client.get(f"/calls/{pg.call.id}", headers=polish))
    assert '<dd id="call-requests">od 1 godz. GPU do 2' in call
    assert "University or research institute" not in call  # who may apply, in Polish too
    dashboard = text(pg.client.get("/", headers=polish))
    assert "Twoje szkice wniosków" in dashboard and ">Kontynuuj<" in dashboard


# --- in a real browser ---------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_in_a_browser_ticking_a_site_shows_its_row_and_unticking_it_drops_its_hours(
    grants_portal, oidc_provider, new_page
):
    db = grants_portal.db
    page, pi, errors = person_in_browser(grants_portal, oidc_provider, new_page, "Anna", "Tamm")
    gpus, playground = three_sites(db)
    org = projects.create_organisation(db, pi, name="Tartu Ülikool", kind="university", country="EE")
    project = projects.create_project(db, pi, org, title="Estonian speech models")
    application = grants.start_application(
        db, pi, login_of(pi), call=playground, project=project, title="Whisper for Estonian"
    )
    tll = gpus[2]
    page.goto(f"{grants_portal.url}/applications/{application.id}/edit")
    assert page.locator("input[name^=hours_]").count() == 0
    assert not page.get_by_role("button", name="Show the ticked sites").is_visible()  # <noscript>: not with JS
    assert_accessible(page, "the editor with its sites to tick")

    page.get_by_label("Tallinn AI Centre: H100 GPU-hours").check()
    hours = page.get_by_label("H100 GPU-hours, Tallinn AI Centre")
    hours.fill("25")
    page.get_by_label("Why H100 GPU-hours at Tallinn AI Centre").fill("Fine-tuning runs")
    page.locator("#save-status .saved").wait_for()
    assert page.locator("input[name^=hours_]").count() == 1

    def asked() -> dict[int, int]:
        db.expire_all()
        rows = db.exec(select(ResourceRequest).where(ResourceRequest.application_id == application.id)).all()
        return {r.resource_id: r.requested for r in rows}

    deadline = time.monotonic() + 10
    while asked() != {tll.id: 25 * HOUR} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert asked() == {tll.id: 25 * HOUR}
    assert_accessible(page, "the editor with a site ticked")

    page.get_by_label("Tallinn AI Centre: H100 GPU-hours").uncheck()
    hours.wait_for(state="detached")
    deadline = time.monotonic() + 10
    while asked() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert asked() == {}
    page.reload()
    assert page.locator("input[name^=hours_]").count() == 0
    assert errors == []
