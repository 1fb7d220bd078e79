"""Rate limits: each limited route refuses with 429 and ``Retry-After`` once its limit is spent (problem details on
the API and the OAuth token endpoint, a page elsewhere), and the counters are per client; Redis shares them
between processes, as gunicorn's workers do."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session

from portal import create_app
from portal.identity.services import create_api_token
from tests.compute.test_compute import authorize, basic, code_from, exchange
from tests.conftest import post_form

REDIS = "redis://127.0.0.1:6379/0"


def limited_app(make_settings, **limits: str) -> Flask:
    return create_app(make_settings(rate_limits=limits))


def from_address(app: Flask, address: str) -> FlaskClient:
    """A browser or script at another address (each address has its own counters)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def assert_too_many(response, *, problem: bool) -> int:
    assert response.status_code == 429, response.get_data(as_text=True)
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 3600
    if problem:
        assert response.mimetype == "application/problem+json"
        assert response.json["status"] == 429 and response.json["title"] == "Too many requests"
        assert f"Try again in {retry_after} seconds" in response.json["detail"]
    else:
        assert response.mimetype == "text/html"
        page = response.get_data(as_text=True)
        assert "<h1>Too many requests</h1>" in page and f"Try again in {retry_after} seconds" in page
    return retry_after


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.usefixtures("oidc_provider")  # its logins start at the provider
def test_login_starts_are_limited_per_address(make_settings) -> None:
    app = limited_app(make_settings, login="3 per minute")
    browser = app.test_client()
    for _ in range(3):
        assert browser.get("/login/eidas").status_code == 302
    assert_too_many(browser.get("/login/eidas"), problem=False)
    assert from_address(app, "192.0.2.7").get("/login/eidas").status_code == 302  # another address is not held


def test_failed_api_token_authentication_is_limited_and_then_even_a_good_token_waits(
    make_settings, login, db: Session
) -> None:
    app = limited_app(make_settings, api_auth_failures="3 per minute")
    client = app.test_client()
    user = login(client)
    with Session(app.extensions["portal.engine"]) as session:
        _row, token = create_api_token(session, user, name="script", scopes=["read"], ttl_days=30)
    for _ in range(5):  # successes do not count
        assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    for guess in range(3):
        assert client.get("/api/v1/me", headers=bearer(f"bafp_guess{guess}")).status_code == 401
    assert_too_many(client.get("/api/v1/projects", headers=bearer("bafp_guess4")), problem=True)
    assert_too_many(client.get("/api/v1/me", headers=bearer(token)), problem=True)
    assert from_address(app, "192.0.2.8").get("/api/v1/me", headers=bearer(token)).status_code == 200


def test_the_hubs_failed_client_authentication_at_the_token_endpoint_is_limited(make_settings, login) -> None:
    app = limited_app(make_settings, oauth_client_auth_failures="2 per minute")
    browser = app.test_client()
    login(browser)
    hub = app.test_client()
    assert exchange(hub, code_from(authorize(browser))).status_code == 200  # a good exchange does not count
    code = code_from(authorize(browser))
    for _ in range(2):
        assert exchange(hub, code, headers=basic(secret="guessed")).status_code == 401
    assert_too_many(exchange(hub, code), problem=True)  # even with the right secret, for now


def test_invitations_are_limited_when_sent_from_the_page_and_the_api(make_settings, login) -> None:
    app = limited_app(make_settings, invitations="2 per hour")
    client = app.test_client()
    user = login(client)
    with Session(app.extensions["portal.engine"]) as session:
        _row, token = create_api_token(session, user, name="script", scopes=["read", "write"], ttl_days=30)
    script = from_address(app, "192.0.2.9")
    org = script.post(
        "/api/v1/organisations",
        json={"name": "Riga Robotics", "kind": "sme", "country": "LV", "vat_number": ""},
        headers=bearer(token),
    ).json
    project = script.post(
        f"/api/v1/organisations/{org['id']}/projects", json={"title": "Pick and place"}, headers=bearer(token)
    ).json
    path = f"/projects/{project['id']}/invitations"

    def invite(n: int) -> Any:
        return post_form(
            client, path, {"email": f"x{n}@example.eu", "role": "member"}, page=f"/projects/{project['id']}"
        )

    assert [invite(n).status_code for n in range(2)] == [302, 302]
    assert_too_many(invite(3), problem=False)

    by_api = [
        script.post(f"/api/v1{path}", json={"email": f"y{n}@example.eu", "role": "member"}, headers=bearer(token))
        for n in range(3)
    ]
    assert [r.status_code for r in by_api[:2]] == [201, 201]
    assert_too_many(by_api[2], problem=True)


def test_guessing_invitation_links_is_limited(make_settings) -> None:
    app = limited_app(make_settings, invitations="3 per hour")
    guesser = app.test_client()
    answers = [guesser.get(f"/invitations/{uuid.uuid4().hex}").status_code for _ in range(3)]
    assert 429 not in answers
    assert_too_many(guesser.get(f"/invitations/{uuid.uuid4().hex}"), problem=False)


def test_course_join_codes_are_limited_per_user(make_settings, login) -> None:
    app = limited_app(make_settings, join_codes="2 per minute")
    student = app.test_client()
    login(student)
    answers = [
        post_form(student, "/courses/join", {"code": f"WRONG{n}"}, page="/courses").status_code for n in range(2)
    ]
    assert 429 not in answers and all(status >= 400 for status in answers)  # wrong codes, refused as such
    assert_too_many(post_form(student, "/courses/join", {"code": "WRONG3"}, page="/courses"), problem=False)
    classmate = app.test_client()
    login(classmate)
    assert post_form(classmate, "/courses/join", {"code": "WRONG4"}, page="/courses").status_code != 429


def test_the_default_limits_leave_ordinary_use_alone(client: FlaskClient, login) -> None:
    for _ in range(5):
        login(client)
    assert client.get("/account").status_code == 200


def test_unknown_or_malformed_limits_are_refused_in_the_settings(make_settings) -> None:
    with pytest.raises(ValueError, match="unknown rate limit"):
        make_settings(rate_limits={"logins": "3 per minute"})
    with pytest.raises(ValueError, match="is not a limit"):
        make_settings(rate_limits={"login": "lots"})


@pytest.mark.usefixtures("oidc_provider")  # its logins start at the provider
def test_redis_shares_the_counters_between_processes(make_settings) -> None:
    """Two applications (two gunicorn workers) on one Redis count together; requires Redis on 127.0.0.1:6379."""
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis must run on 127.0.0.1:6379 (as in CI): {exc}")
    settings = make_settings(rate_limit_storage_url=REDIS, rate_limits={"login": "3 per minute"})
    first, second = create_app(settings), create_app(settings)
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}-{uuid.uuid4().hex[:8]}"  # this test's own counter
    assert from_address(first, address).get("/login/eidas").status_code == 302
    assert from_address(second, address).get("/login/eidas").status_code == 302
    assert from_address(first, address).get("/login/eidas").status_code == 302
    assert_too_many(from_address(second, address).get("/login/eidas"), problem=False)
