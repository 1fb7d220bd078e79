"""Health, security headers, cookies and CSRF: what every page shares."""

from __future__ import annotations

from portal.migrations import head_revision
from tests.conftest import post_form


def test_healthz_reports_a_migrated_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["database"] == {
        "dialect": "sqlite",
        "ok": True,
        "revision": head_revision(),
        "head": head_revision(),
        "migrated": True,
    }


def test_healthz_says_degraded_when_the_schema_is_missing(make_settings, tmp_path):
    from portal import create_app

    app = create_app(make_settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}"))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["status"] == "degraded"
    assert response.json["database"]["migrated"] is False


def test_pages_carry_a_self_only_csp_and_refuse_framing(client):
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP: no HSTS


def test_hsts_is_sent_behind_a_tls_terminating_proxy(make_settings):
    from portal import create_app

    app = create_app(make_settings(base_url="https://portal.factory.example.eu", trusted_proxies=1))
    response = app.test_client().get("/", headers={"X-Forwarded-Proto": "https"})
    assert "max-age=63072000" in response.headers["Strict-Transport-Security"]


def test_session_cookie_is_secure_httponly_and_lax_on_https(make_settings, login):
    from portal import create_app

    app = create_app(make_settings(base_url="https://portal.factory.example.eu", trusted_proxies=1))
    client = app.test_client()
    response = client.get("/login/eidas", headers={"X-Forwarded-Proto": "https"})
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("portal_session=")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_form_without_csrf_token_is_refused_and_changes_nothing(client, login, db):
    login(client)
    response = client.post("/organisations/new", data={"name": "No Token Ltd", "kind": "sme", "country": "EE"})
    assert response.status_code == 400
    assert "Form expired" in response.get_data(as_text=True)
    from sqlmodel import select

    from portal.projects.models import Organisation

    assert db.exec(select(Organisation).where(Organisation.name == "No Token Ltd")).first() is None


def test_form_with_csrf_token_is_accepted(client, login):
    login(client)
    response = post_form(
        client,
        "/organisations/new",
        {"name": "Token Ltd", "kind": "sme", "country": "EE", "registry_id": "", "vat_number": ""},
    )
    assert response.status_code == 302


def test_htmx_is_served_from_the_portal_itself(client):
    html = client.get("/").get_data(as_text=True)
    assert "/static/vendor/htmx-2.0.11.min.js" in html
    assert client.get("/static/vendor/htmx-2.0.11.min.js").status_code == 200
