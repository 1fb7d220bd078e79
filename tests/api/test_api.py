"""The JSON API: personal API tokens, RFC 9457 problems, the OpenAPI document, and a round trip."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, func, select

from portal.identity.models import ApiToken, User
from portal.identity.services import create_api_token
from portal.projects.models import Invitation, Organisation
from tests.conftest import post_form

ORG = {"name": "Gdansk Vision", "kind": "sme", "country": "PL", "vat_number": "PL5260250274"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body["status"] == status
    assert body["title"] and "type" in body
    return body


@pytest.fixture
def user(client: FlaskClient, login) -> User:
    return login(client, given_name="Anna", family_name="Api")


@pytest.fixture
def token(db: Session, user: User) -> str:
    _row, plain = create_api_token(db, user, name="script", scopes=["read", "write"], ttl_days=30)
    return plain


def count(db: Session, model: type) -> int:
    db.expire_all()
    return db.exec(select(func.count()).select_from(model)).one()


# --- personal API tokens -------------------------------------------------------------------------------


def test_token_from_the_account_page_is_shown_once_and_stored_hashed(client, user, db):
    response = post_form(client, "/account/tokens", {"name": "laptop", "scopes": ["read"], "ttl_days": "30"})
    assert response.status_code == 200
    match = re.search(r'<code id="new-token">([^<]+)</code>', response.get_data(as_text=True))
    assert match, "the new token is not shown"
    plain = match.group(1)
    assert plain.startswith("bafp_") and len(plain) > 40

    account = client.get("/account").get_data(as_text=True)
    assert plain not in account
    assert "laptop" in account and f"{plain[:11]}…" in account  # listed by its prefix only

    row = db.exec(select(ApiToken).where(ApiToken.user_id == user.id)).one()
    assert row.digest == hashlib.sha256(plain.encode()).hexdigest()
    assert all(plain not in str(value) for value in row.model_dump().values())
    assert row.scopes == ["read"]
    assert timedelta(days=29) < row.expires_at - datetime.now(UTC) <= timedelta(days=30)

    me = client.get("/api/v1/me", headers=bearer(plain))
    assert me.status_code == 200
    assert me.json["id"] == user.id and me.json["display_name"] == "Anna Api"


def test_token_form_refuses_a_token_without_scopes(client, user, db):
    response = post_form(client, "/account/tokens", {"name": "nothing", "ttl_days": "30"})
    assert response.status_code == 422
    assert 'id="new-token"' not in response.get_data(as_text=True)
    assert count(db, ApiToken) == 0


def test_read_token_cannot_write(client, user, db):
    _row, read_only = create_api_token(db, user, name="read", scopes=["read"], ttl_days=5)
    assert client.get("/api/v1/projects", headers=bearer(read_only)).status_code == 200
    body = assert_problem(client.post("/api/v1/organisations", json=ORG, headers=bearer(read_only)), 403)
    assert "'write' scope" in body["detail"]
    assert count(db, Organisation) == 0

    _row, write_only = create_api_token(db, user, name="write", scopes=["write"], ttl_days=5)
    assert_problem(client.get("/api/v1/projects", headers=bearer(write_only)), 403)


def test_revoked_token_is_refused(client, user, db, token):
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    row = db.exec(select(ApiToken)).one()
    assert post_form(client, f"/account/tokens/{row.id}/revoke").status_code == 302
    response = client.get("/api/v1/me", headers=bearer(token))
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="portal"'


def test_someone_elses_token_cannot_be_revoked(app, client, user, db, token, login):
    row = db.exec(select(ApiToken)).one()
    other = app.test_client()
    login(other)
    assert post_form(other, f"/account/tokens/{row.id}/revoke").status_code == 404
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


def test_expired_token_is_refused(client, db, user):
    _row, plain = create_api_token(db, user, name="short", scopes=["read"], ttl_days=1)
    assert client.get("/api/v1/me", headers=bearer(plain)).status_code == 200
    with time_machine.travel(datetime.now(UTC) + timedelta(days=1, minutes=1), tick=False):
        assert_problem(client.get("/api/v1/me", headers=bearer(plain)), 401)


@pytest.mark.parametrize(
    "header",
    ["", "Bearer ", "Bearer bafp_not-a-real-token", "Basic dXNlcjpwYXNz", "bafp_no_scheme"],
    ids=["none", "empty", "unknown", "basic", "no-scheme"],
)
def test_missing_or_unknown_token_is_401(client, header):
    response = client.get("/api/v1/projects", headers={"Authorization": header} if header else {})
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# --- bad input: RFC 9457 problems ----------------------------------------------------------------------


def test_malformed_json_body_is_422_with_errors(client, token, db):
    response = client.post(
        "/api/v1/organisations",
        data='{"name": "Broken",',
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    body = assert_problem(response, 422)
    assert body["errors"]
    assert count(db, Organisation) == 0


def test_body_not_matching_the_schema_is_422_with_each_error(client, token, db):
    response = client.post(
        "/api/v1/organisations", json={"name": "", "kind": "castle", "country": "Poland"}, headers=bearer(token)
    )
    body = assert_problem(response, 422)
    assert {tuple(e["loc"]) for e in body["errors"]} == {("name",), ("kind",), ("country",)}
    assert count(db, Organisation) == 0


def test_each_schema_error_is_said_in_the_callers_language(client, token, db):
    """pydantic writes English; the common refusals are said in the caller's language, ``type`` kept for programs."""
    body = {"name": "", "kind": "castle", "country": "PL"}
    said = {}
    for language in ("en", "pl", "lt", "lv", "et"):
        response = client.post(
            "/api/v1/organisations", json=body, headers={**bearer(token), "Accept-Language": language}
        )
        problem = assert_problem(response, 422)
        said[language] = {e["loc"][0]: (e["type"], e["msg"]) for e in problem["errors"]}
    assert said["en"]["name"] == ("string_too_short", "At least 1 character.")
    assert said["pl"]["name"] == ("string_too_short", "Co najmniej 1 znak.")
    assert said["et"]["name"] == ("string_too_short", "Vähemalt 1 märk.")
    assert said["lv"]["kind"][0] in ("enum", "literal_error") and said["lv"]["kind"][1].startswith("Ievadiet vienu no")
    assert said["lt"]["name"] == ("string_too_short", "Ne mažiau kaip 1 simbolis.")
    assert count(db, Organisation) == 0


def test_wrong_content_type_is_refused(client, token, db):
    response = client.post(
        "/api/v1/organisations", data={"name": "Form Ltd", "kind": "sme", "country": "PL"}, headers=bearer(token)
    )
    assert 400 <= response.status_code < 500
    assert_problem(response, response.status_code)
    assert count(db, Organisation) == 0


def test_invalid_vat_number_is_422_naming_the_field(client, token, db):
    response = client.post("/api/v1/organisations", json={**ORG, "vat_number": "PL5260250275"}, headers=bearer(token))
    body = assert_problem(response, 422)
    assert "check digit is wrong" in body["errors"]["vat_number"]
    assert count(db, Organisation) == 0


def test_unknown_route_and_method_are_problems_too(client, token):
    assert_problem(client.get("/api/v1/nothing-here", headers=bearer(token)), 404)
    assert_problem(client.delete("/api/v1/projects", headers=bearer(token)), 405)
    assert_problem(client.get("/api/v1/projects/987654", headers=bearer(token)), 404)


# --- the OpenAPI document, tested against the implementation ------------------------------------------


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def api_routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "api.openapi_document"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def test_openapi_document_lists_every_api_route_and_declares_bearer_auth(app, client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"]

    schemes = doc["components"]["securitySchemes"]
    bearer_schemes = [name for name, s in schemes.items() if s["type"] == "http" and s["scheme"] == "bearer"]
    assert bearer_schemes
    assert any(name in requirement for requirement in doc["security"] for name in bearer_schemes)

    documented = {(path, method) for path, operations in doc["paths"].items() for method in operations}
    routes = api_routes(app)
    assert routes - documented == set(), "API routes missing from the OpenAPI document"
    assert documented - routes == set(), "the OpenAPI document lists operations the app does not have"


def test_each_documented_operation_exists_with_its_parameters(app, client):
    doc = client.get("/api/v1/openapi.json").json
    adapter = app.url_map.bind("localhost")
    for path, operations in doc["paths"].items():
        names = re.findall(r"{([^}]+)}", path)
        concrete = re.sub(r"{[^}]+}", "1", path)
        for method, operation in operations.items():
            rule, _args = adapter.match(concrete, method=method.upper(), return_rule=True)
            assert openapi_path(rule.rule) == path, (method, path)
            assert rule.endpoint.startswith("api."), rule.endpoint
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(names) == set(rule.arguments), (method, path)
            if method in ("post", "put", "patch"):
                assert "application/json" in operation["requestBody"]["content"], (method, path)
            assert operation["responses"], (method, path)


def test_each_operation_documents_the_problems_it_answers(client):
    """Every operation needs a token with a scope (401, 403); one naming an object may answer 404; one with a
    body, 422. The tests above see the implementation answer each of these."""
    doc = client.get("/api/v1/openapi.json").json
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            expected = {"401", "403"}
            if "{" in path:
                expected.add("404")
            if "requestBody" in operation:
                expected.add("422")
            assert expected <= set(operation["responses"]), (method, path, sorted(operation["responses"]))
            expected |= {"429", "503"}  # too many failed authentications; the database unavailable
            for status in expected:
                content = operation["responses"][status]["content"]
                assert set(content) == {"application/problem+json"}, (method, path, status)  # as the API answers
                assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert "Retry-After" in operation["responses"]["429"]["headers"], (method, path)


# --- a round trip --------------------------------------------------------------------------------------


def test_round_trip_organisation_project_members_invitation(client, token, user, db):
    auth = bearer(token)
    created = client.post("/api/v1/organisations", json={**ORG, "vat_number": "526-025-02-74"}, headers=auth)
    assert created.status_code == 201, created.get_data(as_text=True)
    org = created.json
    assert org["vat_number"] == "PL5260250274" and org["verified"] is False and org["country"] == "PL"
    assert client.get("/api/v1/organisations", headers=auth).json == [org]
    assert client.get(f"/api/v1/organisations/{org['id']}", headers=auth).json == org

    made = client.post(
        f"/api/v1/organisations/{org['id']}/projects",
        json={"title": "Shipyard vision", "description": "Hull inspection"},
        headers=auth,
    )
    assert made.status_code == 201, made.get_data(as_text=True)
    project = made.json
    assert project["organisation_id"] == org["id"] and project["archived"] is False
    assert client.get("/api/v1/projects", headers=auth).json == {
        "projects": [project],
        "next_cursor": None,
        "next": None,
    }
    assert client.get(f"/api/v1/projects/{project['id']}", headers=auth).json == project
    assert client.get(f"/api/v1/projects/{project['id']}/members", headers=auth).json == [
        {"user_id": user.id, "display_name": "Anna Api", "role": "pi"}
    ]

    invited = client.post(
        f"/api/v1/projects/{project['id']}/invitations",
        json={"email": "colleague@example.eu", "role": "manager"},
        headers=auth,
    )
    assert invited.status_code == 201, invited.get_data(as_text=True)
    body = invited.json
    assert (body["email"], body["role"]) == ("colleague@example.eu", "manager")
    assert "link" not in body and "token" not in body  # the link goes to the invitee's inbox only
    invitation = db.exec(select(Invitation).where(Invitation.id == body["id"])).one()
    assert invitation.project_id == project["id"] and invitation.invited_by_id == user.id

    refused = client.post(
        f"/api/v1/projects/{project['id']}/invitations", json={"email": "x@example.eu", "role": "pi"}, headers=auth
    )
    assert "role" in assert_problem(refused, 422)["errors"]
    bad_email = client.post(
        f"/api/v1/projects/{project['id']}/invitations", json={"email": "not an address"}, headers=auth
    )
    assert "email" in assert_problem(bad_email, 422)["errors"]
    assert count(db, Invitation) == 1
