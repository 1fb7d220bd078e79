"""Sessions are kept on the server: logging out, "log out everywhere", losing a role, deactivation and the
absolute lifetime end them, whatever a copy of the signed cookie says; the hub's tokens end with them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from portal.identity.models import ApiToken, FactoryRole, User
from portal.identity.services import grant_role, revoke_role
from tests.compute.test_compute import authorize, code_from, exchange, userinfo
from tests.conftest import csrf_token, portal_cli, post_form, unique_sub

COOKIE = "portal_session"


def copy_of(client: FlaskClient) -> FlaskClient:
    """Another browser holding a copy of ``client``'s session cookie (stolen, or a forgotten tab)."""
    other = client.application.test_client()
    other.set_cookie(COOKIE, client.get_cookie(COOKIE).value)
    return other


def logged_in(client: FlaskClient) -> bool:
    response = client.get("/account")
    if response.status_code == 200:
        return True
    assert response.status_code == 302 and response.headers["Location"].startswith("/login"), response.status_code
    return False


def test_a_cookie_copied_before_logout_opens_nothing_and_mints_no_token_afterwards(
    client: FlaskClient, login, db: Session
) -> None:
    user = login(client)
    thief = copy_of(client)
    token = csrf_token(thief)  # the thief even has a valid form token from before the logout
    assert logged_in(thief)

    assert post_form(client, "/logout").status_code == 302

    assert not logged_in(thief)
    minted = thief.post(
        "/account/tokens", data={"csrf_token": token, "name": "stolen", "scopes": ["read", "write"], "ttl_days": "366"}
    )
    assert minted.status_code == 302 and minted.headers["Location"].startswith("/login")
    assert db.exec(select(ApiToken).where(ApiToken.user_id == user.id)).all() == []


def test_log_out_everywhere_ends_the_sessions_of_every_browser(app: Flask, login, db: Session) -> None:
    sub = unique_sub()
    laptop, phone = app.test_client(), app.test_client()
    me = login(laptop, sub)
    assert login(phone, sub).id == me.id
    someone_else = app.test_client()
    login(someone_else)

    page = laptop.get("/account").get_data(as_text=True)
    sessions = page.split('id="sessions-h"')[1].split('id="tokens-h"')[0]
    assert "Log out everywhere" in sessions
    assert sessions.count("<tr><td>") == 2 and sessions.count("this browser") == 1  # both, this one marked

    response = post_form(laptop, "/account/sessions/end-all")

    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert "2 sessions ended" in laptop.get("/login").get_data(as_text=True)
    assert not logged_in(laptop) and not logged_in(phone)
    assert logged_in(someone_else)
    login(phone, sub)  # logging in again works
    assert logged_in(phone)


def test_a_session_ends_at_its_absolute_lifetime_however_active_and_its_cookie_is_not_renewed(
    make_settings, login
) -> None:
    from portal import create_app

    client = create_app(make_settings(session_lifetime_hours=2)).test_client()
    login(client)
    started = datetime.now(UTC)
    client.get("/account")  # the first page with a form stores the session's CSRF secret
    for minutes in (30, 60, 90, 115):  # busy all along
        with time_machine.travel(started + timedelta(minutes=minutes), tick=False):
            response = client.get("/account")
            assert response.status_code == 200
            assert "Set-Cookie" not in response.headers  # the cookie does not extend itself on use
    with time_machine.travel(started + timedelta(minutes=121), tick=False):
        assert not logged_in(client)


def test_losing_a_role_ends_the_sessions_of_its_holder(app: Flask, login, db: Session) -> None:
    boss_client, clerk_client = app.test_client(), app.test_client()
    boss = login(boss_client)
    clerk = login(clerk_client)
    grant_role(db, None, boss, FactoryRole.ADMIN, reason="test setup")
    grant_role(db, None, clerk, FactoryRole.FINANCE, reason="test setup")
    assert logged_in(clerk_client)  # a grant keeps the session

    response = post_form(boss_client, f"/admin/users/{clerk.id}/roles/finance/revoke", {"reason": "Moved to sales"})

    assert response.status_code == 302
    assert not logged_in(clerk_client)
    assert logged_in(boss_client)


def test_revoking_through_the_service_ends_the_sessions_too(app: Flask, login, db: Session) -> None:
    client = app.test_client()
    reviewer = login(client)
    boss = db.get(User, login(app.test_client()).id)
    grant_role(db, None, boss, FactoryRole.ADMIN, reason="test setup")
    grant_role(db, None, reviewer, FactoryRole.REVIEWER, reason="test setup")
    revoke_role(db, boss, reviewer, FactoryRole.REVIEWER, reason="Conflict of interest")
    assert not logged_in(client)


def test_deactivating_a_user_on_the_command_line_ends_their_sessions_at_once(app: Flask, login, db: Session) -> None:
    client = app.test_client()
    user = login(client)
    assert logged_in(client)

    result = portal_cli(app, "users", "deactivate", user.email, "--reason", "Left the institute")

    assert result.returncode == 0, result.stderr
    assert "their sessions have ended" in result.stdout
    assert not logged_in(client)
    again = app.test_client()
    db.expire_all()
    assert db.get(User, user.id).is_active is False
    from tests.conftest import LoginAttempt

    refused = LoginAttempt(again, "eidas").start().authorize(client_sub(db, user)).finish()
    assert refused.status_code == 403 and "deactivated" in refused.get_data(as_text=True)


def client_sub(db: Session, user: User) -> str:
    from portal.identity.models import ExternalIdentity

    return db.exec(select(ExternalIdentity).where(ExternalIdentity.user_id == user.id)).one().subject


def test_hub_access_tokens_end_with_the_portal_session_that_issued_them(app: Flask, login) -> None:
    browser = app.test_client()
    login(browser)
    hub = app.test_client()
    issued = exchange(hub, code_from(authorize(browser, scope="openid profile")))
    assert issued.status_code == 200
    access_token = issued.json["access_token"]
    assert userinfo(hub, access_token).status_code == 200
    unused_code = code_from(authorize(browser, scope="openid profile"))

    assert post_form(browser, "/logout").status_code == 302

    refused = userinfo(hub, access_token)
    assert refused.status_code == 401 and refused.json["error"] == "invalid_token"
    late = exchange(hub, unused_code)  # a code granted before the logout and exchanged after it
    assert late.status_code == 400 and late.json["error"] == "invalid_grant"


def test_a_session_from_before_server_side_sessions_is_not_honoured(app: Flask, login) -> None:
    """A cookie signed with the right key but naming no server-side session (as every cookie did before)."""
    client = app.test_client()
    login(client)
    with client.session_transaction() as flask_session:
        del flask_session["web_session"]
    assert not logged_in(client)
