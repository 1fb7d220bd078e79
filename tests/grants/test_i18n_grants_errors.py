"""The grants' refusals are read in the reader's language (issue 14): an API problem's detail and field messages
follow ``Accept-Language``, a page's refusal and its eligibility notes follow the page's language, and states are
named in the reader's words; in English, outside a request and in what is stored (a decision's reasons), the
text is what it always was."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from sqlmodel import Session

from portal.grants import services as grants
from portal.grants.models import Application, ApplicationState, ReviewMode
from portal.identity.models import User
from portal.identity.services import create_api_token
from portal.projects import services as projects
from tests.conftest import post_form
from tests.grants_world import login_of, make_call, make_grant_world, plan_capacity_from_today
from tests.ledger_world import HOUR, make_world

APPLY_WITHOUT_LOGIN = {
    "en": "To apply as PI, log in with your institution (academic federation) or with eIDAS at level substantial or "
    "higher.",
    "pl": "Aby złożyć wniosek jako kierownik projektu, zaloguj się przez swoją instytucję (federacja akademicka) albo "
    "przez eIDAS na poziomie zapewnienia średnim lub wysokim.",
}


def token(db: Session, user: User, *, with_login: bool = True) -> dict[str, str]:
    """A read and write token; made in a substantial eIDAS login unless ``with_login`` is False."""
    login = login_of(user) if with_login else None
    _row, plain = create_api_token(db, user, name="script", scopes=["read", "write"], ttl_days=30, login=login)
    return {"Authorization": f"Bearer {plain}"}


def problem(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return response.json


def text(response) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


@pytest.fixture
def world(db: Session):
    return make_grant_world(db, mode=ReviewMode.AUTOMATIC)


def test_a_refusal_to_apply_is_in_the_api_readers_language(client, db: Session, world) -> None:
    headers = token(db, world.pi, with_login=False)  # no level of assurance behind the token
    body = {"call_id": world.call.id, "project_id": world.project.id, "title": "Speech"}
    for language in ("pl", "en"):
        refused = client.post("/api/v1/applications", json=body, headers={**headers, "Accept-Language": language})
        assert problem(refused, 409)["detail"] == APPLY_WITHOUT_LOGIN[language], language


def test_a_drafts_field_messages_follow_accept_language(client, db: Session, world) -> None:
    draft = grants.start_application(
        db, world.pi, login_of(world.pi), call=world.call, project=world.project, title="T"
    )
    headers = token(db, world.pi)
    change = {"answers": {"nodes": "many"}}
    estonian = problem(
        client.patch(f"/api/v1/applications/{draft.id}", json=change, headers={**headers, "Accept-Language": "et"}), 422
    )
    assert estonian["detail"] == "Mõnda vastust ei õnnestunud salvestada."
    assert estonian["errors"]["answers.nodes"] == "Sisestage täisarv."
    english = problem(client.patch(f"/api/v1/applications/{draft.id}", json=change, headers=headers), 422)
    assert english["detail"] == "Some answers could not be saved."
    assert english["errors"]["answers.nodes"] == "Enter a whole number."


def test_a_step_refused_in_a_state_names_the_state_in_the_readers_words(client, db: Session, world, settings) -> None:
    draft = grants.start_application(
        db, world.pi, login_of(world.pi), call=world.call, project=world.project, title="T"
    )
    grants.withdraw(db, settings, world.pi, draft)
    headers = token(db, world.pi)
    url = f"/api/v1/applications/{draft.id}/submit"
    for language, detail in (
        ("pl", "Wniosku w stanie „wycofany” nie można złożyć."),
        ("et", "Taotlust olekus „tagasi võetud” ei saa esitada."),
        ("en", "An application that is withdrawn cannot submit."),
    ):
        refused = problem(client.post(url, json={}, headers={**headers, "Accept-Language": language}), 409)
        assert refused["detail"] == detail, language
    with pytest.raises(grants.IllegalTransition) as outside:
        grants.submit(db, settings, world.pi, login_of(world.pi), draft)
    assert outside.value.detail == "An application that is withdrawn cannot submit."  # outside a request: English


def test_reasons_decided_in_a_polish_request_are_stored_in_english(client, db: Session) -> None:
    world = make_grant_world(db, mode=ReviewMode.AUTOMATIC, kinds=["sme", "public_body"], countries=["PL"])
    draft = grants.start_application(
        db, world.pi, login_of(world.pi), call=world.call, project=world.project, title="T"
    )
    grants.save_draft(
        db,
        world.pi,
        draft,
        abstract="Train ASR models.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(world.ledger.gpu.id, 20 * HOUR, "Two models")],
    )
    headers = {**token(db, world.pi), "Accept-Language": "pl"}
    answer = client.post(f"/api/v1/applications/{draft.id}/submit", json={}, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.json["state"] == "rejected"
    db.expire_all()
    decided = db.get(Application, draft.id)
    assert decided is not None and decided.state == ApplicationState.REJECTED
    assert decided.decision_reason == (
        "Vilnius Uni is a university or research institute; this call is for sme, public body. "
        "Vilnius Uni is in LT; this call is for organisations in PL."
    )
    with client.application.test_request_context("/", headers={"Accept-Language": "lv"}):
        said = [str(p) for p in grants.eligibility_problems(db, world.call, world.project)]
    assert said == [
        "Vilnius Uni ir universitāte vai pētniecības institūts; šajā konkursā var pieteikties: MVU un jaunuzņēmumi, "
        "publiskās iestādes.",
        "Vilnius Uni atrodas valstī LT; šajā konkursā var pieteikties organizācijas no šīm valstīm: PL.",
    ]


def test_the_managers_page_says_the_refusal_and_the_eligibility_notes_in_lithuanian(
    app: Flask, db: Session, login, settings
) -> None:
    manager_client = app.test_client()
    manager = login(manager_client, given_name="Mona", family_name="Tester")
    pi_client = app.test_client()
    pi = login(pi_client, given_name="Paula", family_name="Tester")
    world = make_world(db)
    plan_capacity_from_today(db, world.gpu)
    call = make_call(db, world.gpu.id, manager, mode=ReviewMode.PEER_REVIEW)
    company = projects.create_organisation(db, pi, name="Speech OU", kind="sme", country="EE")
    project = projects.create_project(db, pi, company, title="Company project")
    application = grants.start_application(db, pi, login_of(pi), call=call, project=project, title="Speech")
    grants.save_draft(
        db,
        pi,
        application,
        abstract="Train ASR models.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(world.gpu.id, 20 * HOUR, "Two models")],
    )
    grants.submit(db, settings, pi, login_of(pi), application)
    lithuanian = {"Accept-Language": "lt"}

    page = text(manager_client.get(f"/applications/{application.id}", headers=lithuanian))
    assert (
        "Speech OU yra MVĮ arba startuolis; šiame kvietime gali dalyvauti: universitetai ir mokslinių tyrimų "
        "institutai." in page
    )
    refused = post_form(manager_client, f"/applications/{application.id}/rank", headers=lithuanian)
    assert refused.status_code == 409
    said = text(refused)
    assert "Paraiškos, kurios būsena – „pateikta“, negalima įtraukti į reitingą." in said
    assert "cannot rank" not in said

    english = text(post_form(manager_client, f"/applications/{application.id}/rank"))
    assert "An application that is submitted cannot rank." in english
    assert "Speech OU is a sme or startup; this call is for university." in english
