"""The services' refusals reach their reader in the reader's language: a wrong join code on the course page, a
refused notebook start, the API token form, a login refused at the callback, a bad cursor in the API. English
readers (and the CLI, logs and tests outside a request) read exactly the English they always did."""

from __future__ import annotations

import html

import pytest
from flask import Flask
from sqlmodel import Session

from portal.audit import services as audit
from portal.config import DEV_HUB_SPAWN_CHECK_TOKEN
from portal.errors import InvalidInput
from portal.identity.models import FactoryRole
from portal.identity.services import create_api_token
from portal.ledger import services as ledger
from portal.pagination import InvalidCursor, decode_cursor
from tests.conftest import LoginAttempt, post_form, unique_sub
from tests.factories import cpu_project, staff


def page_text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_a_wrong_join_code_is_refused_in_the_pages_language(app: Flask, login) -> None:
    client = app.test_client()
    login(client, "wrong-code")
    for language, says in (
        ("lt", "Nė vienas kursas neturi šio kodo. Pasitikrinkite jį pas dėstytoją."),
        ("lv", "Nevienam kursam nav šāda koda. Pārbaudiet to pie pasniedzēja."),
        ("et", "Ühelgi kursusel pole sellist koodi. Kontrollige seda õpetajalt."),
        ("en", "No course has this code. Check it with your teacher."),
    ):
        refused = post_form(
            client, "/courses/join", {"code": "NOPE"}, page="/courses/join", headers={"Accept-Language": language}
        )
        page = page_text(refused)
        assert refused.status_code == 422, page[:500]
        assert says in page, language
        if language != "en":
            assert "No course has this code" not in page


def test_a_refused_notebook_start_is_explained_in_the_pages_language(app: Flask, db: Session, login) -> None:
    client = app.test_client()
    owner = login(client, "refused-start")
    project, allocation = cpu_project(db, owner, hours=10)[1:]
    launch_page = f"/projects/{project.id}/notebooks"
    start = {"allocation_id": str(allocation.id), "profile": "no-such-profile", "hours": "1"}

    unknown = post_form(client, launch_page, start, page=launch_page, headers={"Accept-Language": "et"})
    assert unknown.status_code == 422 and "tundmatu profiil" in page_text(unknown)
    english = post_form(client, launch_page, start, page=launch_page)
    assert english.status_code == 422 and "unknown profile" in page_text(english)

    ledger.set_suspended(db, staff(db, FactoryRole.ADMIN, "Admin"), allocation.id, True, reason="test: suspended")
    start["profile"] = "cpu"
    suspended = post_form(client, launch_page, start, page=launch_page, headers={"Accept-Language": "lv"})
    assert suspended.status_code == 403
    assert f"Piešķīrums '{allocation.title}' ir apturēts, tāpēc ar to neko nevar palaist." in page_text(suspended)
    english = post_form(client, launch_page, start, page=launch_page)
    assert f"Allocation '{allocation.title}' is suspended, so nothing can run on it." in page_text(english)


def test_the_token_forms_refusal_is_in_the_pages_language(app: Flask, login) -> None:
    client = app.test_client()
    login(client, "token-form")
    no_scopes = {"name": "nothing", "ttl_days": "30"}
    refused = post_form(client, "/account/tokens", no_scopes, headers={"Accept-Language": "lt"})
    assert refused.status_code == 422
    assert "Pasirinkite aprėptis iš: admin, operate, read, reports:read, write." in page_text(refused)
    english = post_form(client, "/account/tokens", no_scopes)
    assert "Choose scopes among: admin, operate, read, reports:read, write." in page_text(english)


def test_wtforms_own_messages_are_translated_also_where_wtforms_has_no_catalogue(app: Flask, login) -> None:
    client = app.test_client()
    login(client, "wtforms-reader")
    form = {"name": "", "scopes": ["read"], "ttl_days": "0"}
    for language, required, out_of_range in (
        ("lv", "Šis lauks ir obligāts.", "Skaitlim jābūt no 1 līdz 366."),
        ("lt", "Šis laukas privalomas.", "Skaičius turi būti nuo 1 iki 366."),
        ("en", "This field is required.", "Number must be between 1 and 366."),
    ):
        refused = post_form(client, "/account/tokens", form, headers={"Accept-Language": language})
        page = page_text(refused)
        assert refused.status_code == 422
        assert required in page and out_of_range in page, language
    # Polish and Estonian: WTForms' own catalogue
    estonian = page_text(post_form(client, "/account/tokens", form, headers={"Accept-Language": "et"}))
    assert "Number must be between" not in estonian and "366" in estonian


def test_a_login_refused_at_the_callback_is_explained_in_the_browsers_language(client, oidc_provider) -> None:
    sub = unique_sub("weak")
    oidc_provider.add_user(sub, acr="low")
    client.set_cookie("portal_language", "et")
    response = LoginAttempt(client, "tara").start().authorize(sub).finish()
    page = page_text(response)
    assert response.status_code == 403, page[:500]
    assert "TARA kinnitas teie identiteeti tasemel 'low', kuid see portaal vajab sellelt vähemalt taset" in page
    assert "confirmed your identity" not in page


def test_a_bad_cursor_is_refused_in_the_apis_language(app: Flask, db: Session, login) -> None:
    client = app.test_client()
    owner = login(client, "cursor-reader")
    _token, plain = create_api_token(db, owner, name="lists", scopes=["read"], ttl_days=1)
    for language, detail in (
        ("lt", "Šio žymeklio neišdavė šis portalas; pradėkite nuo pirmo puslapio."),
        ("et", "Seda kursorit ei andnud see portaal; alustage uuesti esimeselt lehelt."),
        ("en", "The cursor is not one this portal handed out; start again from the first page."),
    ):
        response = client.get(
            "/api/v1/projects",
            query_string={"cursor": "not-a-cursor"},
            headers={"Authorization": f"Bearer {plain}", "Accept-Language": language},
        )
        assert response.status_code == 400 and response.json["detail"] == detail, language


def test_the_hubs_spawn_check_answers_in_its_accept_language(app: Flask, db: Session, login) -> None:
    client = app.test_client()
    owner = login(client, "spawn-checked")
    allocation = cpu_project(db, owner, hours=10).allocation
    body = {"user": f"u{owner.id}", "server_name": "cpu", "user_options": {"allocation": allocation.id}}
    hub = {"Authorization": f"Bearer {DEV_HUB_SPAWN_CHECK_TOKEN}"}
    for language, detail in (
        ("et", "Serveri valikutest puudub: hours, profile."),
        ("en", "The server options lack hours, profile."),
    ):
        response = client.post("/api/v1/hub/spawn-check", json=body, headers={**hub, "Accept-Language": language})
        assert response.status_code == 403 and response.json["detail"].startswith(detail), response.json


def test_outside_a_request_the_refusals_read_as_they_always_did(app: Flask) -> None:
    with pytest.raises(InvalidCursor) as cursor:
        decode_cursor("not-a-cursor", [])
    assert cursor.value.detail == "The cursor is not one this portal handed out; start again from the first page."
    with pytest.raises(InvalidInput) as reason:
        audit.require_reason("")
    assert reason.value.detail == "Say why (3 to 500 characters); the reason is kept in the audit log."
    with app.test_request_context("/", headers={"Accept-Language": "pl"}):
        assert reason.value.errors == {"reason": "Podaj powód, od 3 do 500 znaków."}
