"""A refusal is read in the reader's language: the detail of an API problem follows ``Accept-Language``, a form's
field messages and a page's flash follow the page's language; the CLI, the logs and code outside a request read
English. (The errors' titles: tests/i18n/test_i18n.py.)"""

from __future__ import annotations

from portal.errors import InvalidInput, NotFound
from portal.messages import N_, Message
from tests.conftest import csrf_token


def test_a_detail_is_english_outside_a_request_and_the_readers_language_inside_one(app) -> None:
    error = InvalidInput(
        Message(N_("The invitation could not be sent.")),
        errors={
            "email": Message(N_("The mail server does not take mail for %(email)s; check the address."), email="a@b.eu")
        },
    )
    assert error.detail == "The invitation could not be sent." == str(error)
    assert error.errors == {"email": "The mail server does not take mail for a@b.eu; check the address."}
    with app.test_request_context("/api/v1/projects", headers={"Accept-Language": "pl"}):
        assert error.detail == "Nie udało się wysłać zaproszenia."
        assert error.errors == {"email": "Serwer pocztowy nie przyjmuje poczty dla a@b.eu; sprawdź adres."}
    assert NotFound("written as it is").detail == "written as it is"  # a plain string stays as written


def test_an_api_problem_detail_follows_accept_language(client, login) -> None:
    from portal.identity.services import create_api_token

    user = login(client, "detail-reader")
    from sqlmodel import Session

    with Session(client.application.extensions["portal.engine"]) as db:
        _token, plain = create_api_token(db, db.merge(user), name="t", scopes=["read"], ttl_days=1)
    auth = {"Authorization": f"Bearer {plain}"}
    for language, detail in (
        ("et", "Sellist projekti pole."),
        ("lv", "Šāda projekta nav."),
        ("en", "No such project."),
    ):
        response = client.get("/api/v1/projects/987654", headers={**auth, "Accept-Language": language})
        assert response.status_code == 404
        assert response.json["detail"] == detail, language


def test_a_forms_field_messages_are_in_the_pages_language(client, login) -> None:
    login(client, "form-reader")
    form = {"name": "Tartu Vision OÜ", "kind": "sme", "country": "EE", "registry_id": "14532901", "vat_number": ""}
    first = client.post("/organisations/new", data={"csrf_token": csrf_token(client, "/organisations/new"), **form})
    assert first.status_code == 302
    again = client.post(
        "/organisations/new",
        data={"csrf_token": csrf_token(client, "/organisations/new"), **form},
        headers={"Accept-Language": "lt"},
    )
    page = again.get_data(as_text=True)
    assert again.status_code == 422, page[:500]
    assert "Organizacija su šiuo registro kodu jau užregistruota" in page
    assert "already registered" not in page
