"""The refusals of the market, the ledger and the VAT and registry checks are read in the reader's language: an
API problem follows ``Accept-Language``, a page's form and flash messages follow the page's language; English
readers (and the CLI, logs and tests outside a request) read exactly what they read before."""

from __future__ import annotations

import re
from datetime import date

import pytest
from sqlmodel import Session

from portal.errors import InvalidInput
from portal.identity.models import FactoryRole
from portal.identity.services import create_api_token, grant_role
from portal.ledger import services as ledger
from portal.projects import services as projects
from portal.projects.identifiers import IdentifierError, normalise_registry_id, normalise_vat_number
from tests.conftest import csrf_token, post_form
from tests.ledger_world import HOUR, make_world, open_q1, publish_offering

BAD_VAT = "PL5260250275"  # PL5260250274 with a wrong check digit


def page_text(response) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def test_an_identifier_error_reads_english_outside_a_request_and_the_readers_language_inside_one(app) -> None:
    with pytest.raises(IdentifierError) as refused:
        normalise_vat_number("PL", BAD_VAT)
    assert str(refused.value) == "This is not a valid PL VAT number: its check digit is wrong (a typo?)."
    with app.test_request_context("/api/v1/organisations", headers={"Accept-Language": "lv"}):
        assert (
            str(refused.value)
            == "Šis nav derīgs PVN reģistrācijas numurs (PL): nepareizs kontrolcipars (drukas kļūda?)."
        )
    with pytest.raises(IdentifierError) as registry:
        normalise_registry_id("EE", "1234")
    assert str(registry.value) == (
        "This is not a valid EE registry code (registrikood): it has the wrong number of characters."
    )
    with app.test_request_context("/organisations/new", headers={"Accept-Language": "et"}):
        assert str(registry.value) == "Vigane number (EE, registrikood): selles on vale arv märke."


def test_an_invalid_vat_number_on_the_organisation_form_is_refused_in_lithuanian(client, login) -> None:
    login(client, "vat-reader")
    form = {"name": "Gdansk Vision", "kind": "sme", "country": "PL", "registry_id": "", "vat_number": BAD_VAT}
    lithuanian = client.post(
        "/organisations/new",
        data={"csrf_token": csrf_token(client, "/organisations/new"), **form},
        headers={"Accept-Language": "lt"},
    )
    page = page_text(lithuanian)
    assert lithuanian.status_code == 422, page[:500]
    assert "Tai nėra galiojantis PVM mokėtojo kodas (PL): neteisingas kontrolinis skaitmuo (rašybos klaida?)." in page
    assert "check digit" not in page
    english = client.post(
        "/organisations/new",
        data={"csrf_token": csrf_token(client, "/organisations/new"), **form},
        headers={"Accept-Language": "en"},
    )
    assert english.status_code == 422
    assert "This is not a valid PL VAT number: its check digit is wrong (a typo?)." in page_text(english)


def test_an_invalid_vat_number_through_the_api_follows_accept_language(client, login) -> None:
    user = login(client, "vat-api")
    with Session(client.application.extensions["portal.engine"]) as db:
        _token, plain = create_api_token(db, db.merge(user), name="t", scopes=["read", "write"], ttl_days=1)
    body = {"name": "Gdansk Vision", "kind": "sme", "country": "PL", "vat_number": BAD_VAT}
    for language, field in (
        ("lt", "Tai nėra galiojantis PVM mokėtojo kodas (PL): neteisingas kontrolinis skaitmuo (rašybos klaida?)."),
        ("pl", "To nie jest prawidłowy numer VAT UE (PL): cyfra kontrolna się nie zgadza (literówka?)."),
        ("en", "This is not a valid PL VAT number: its check digit is wrong (a typo?)."),
    ):
        response = client.post(
            "/api/v1/organisations",
            json=body,
            headers={"Authorization": f"Bearer {plain}", "Accept-Language": language},
        )
        assert response.status_code == 422, response.get_data(as_text=True)
        assert response.json["errors"]["vat_number"] == field, language


@pytest.fixture
def buyer(app, client, login, db):
    """A logged-in admin of a verified LT company with a project, and a published offering of at most 500 hours
    (nothing here talks to Stripe: every order below is refused before the checkout)."""
    world = make_world(db)
    start = date.today()
    for _ in range(2):
        q_start, q_end = ledger.quarter_of(start)
        ledger.set_capacity(
            db, None, world.gpu, starts_on=q_start, ends_on=q_end, capacity=1000 * HOUR, reason="test setup"
        )
        start = q_end
    user = login(client)
    org = projects.create_organisation(
        db, user, name="Kaunas Vision UAB", kind="sme", country="LT", vat_number="LT119511515"
    )
    admin = login(app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    project = projects.create_project(db, user, org, title="Shelf vision")
    return project, publish_offering(db, world.gpu)


def test_an_order_above_the_largest_quantity_is_refused_in_polish(client, buyer) -> None:
    project, offering = buyer
    path, data = f"/market/offerings/{offering.id}/order", {"project_id": project.id, "quantity": 501}
    polish = post_form(client, path, data, page="/market", headers={"Accept-Language": "pl"})
    page = page_text(polish)
    assert polish.status_code == 422, page[:500]
    assert "Od 1 do 500." in page
    assert "Between 1 and 500" not in page
    english = post_form(client, path, data, page="/market", headers={"Accept-Language": "en"})
    assert english.status_code == 422 and "Between 1 and 500." in page_text(english)


@pytest.fixture
def pi_world(client, login, db):
    pi = login(client)
    world = make_world(db)
    org = projects.create_organisation(db, pi, name="Riga Uni", kind="university", country="LV")
    project = projects.create_project(db, pi, org, title="Latvian LLM")
    first = open_q1(db, world, 100, project=project, title="Main award")
    second = open_q1(db, world, 20, project=project, title="Pilot")
    return project, first, second


def transfer(client, project, first, second, hours: str, language: str):
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = language
    return post_form(
        client,
        f"/projects/{project.id}/allocations/transfer",
        {"from_id": first.id, "to_id": second.id, "hours": hours},
        page=f"/projects/{project.id}",
        follow_redirects=True,
    )


def test_a_transfer_larger_than_the_balance_is_refused_in_latvian(client, pi_world) -> None:
    project, first, second = pi_world
    latvian = page_text(transfer(client, project, first, second, "500", "lv"))
    assert "Piešķīrumā atlicis 100,0 GPU st.; pieprasīts 500,0 GPU st." in latvian
    assert "were asked for" not in latvian
    english = page_text(transfer(client, project, first, second, "500", "en"))
    assert "The allocation has 100.0 GPU-hours left; 500.0 GPU-hours were asked for." in english


def test_a_quantity_that_is_not_a_number_is_refused_in_estonian(client, pi_world) -> None:
    project, first, second = pi_world
    estonian = page_text(transfer(client, project, first, second, "lots", "et"))
    assert "Sisestage arv, näiteks 12,5." in estonian
    assert "for example" not in estonian
    english = page_text(transfer(client, project, first, second, "lots", "en"))
    assert "Enter a number, for example 12.5." in english


def test_a_refusal_outside_a_request_stays_english(db) -> None:
    with pytest.raises(InvalidInput) as refused:
        from portal.formatting import parse_quantity

        parse_quantity("1.001", "gpu", field="hours")
    assert refused.value.detail == "Too many decimals."
    assert refused.value.errors == {"hours": "Use at most two decimals."}
