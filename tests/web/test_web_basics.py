"""Health, security headers, cookies and CSRF: what every page shares."""

from __future__ import annotations

from urllib.parse import urlsplit

from portal.migrations import head_revision
from tests.conftest import post_form

METRICS_TOKEN = "operators-metrics-token-0123456789abcdef"


def test_healthz_tells_anonymous_callers_only_up_or_down(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}  # no dialect, revision or error kind for whoever asks


def test_healthz_reports_a_migrated_database_to_operators(make_settings):
    from portal import create_app

    client = create_app(make_settings(metrics_token=METRICS_TOKEN)).test_client()
    assert client.get("/healthz", headers={"Authorization": "Bearer wrong"}).json == {"status": "ok"}
    response = client.get("/healthz", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
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

    app = create_app(make_settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", metrics_token=METRICS_TOKEN))
    assert app.test_client().get("/healthz").json == {"status": "degraded"}
    response = app.test_client().get("/healthz", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
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


def test_forms_may_post_only_to_the_portal_and_the_places_its_answers_lead_to(client, settings):
    csp = client.get("/login").headers["Content-Security-Policy"]
    form_action = next(d.strip() for d in csp.split(";") if d.strip().startswith("form-action"))
    sources = form_action.split()[1:]
    assert sources[0] == "'self'"
    provider = urlsplit(settings.oidc_providers[0].discovery_url)
    hub = urlsplit(settings.hub_oauth_redirect_uri)
    # linking an identity redirects to the provider, buying hours to Stripe, starting a notebook to the hub
    assert set(sources[1:]) == {
        f"{provider.scheme}://{provider.netloc}",
        f"{hub.scheme}://{hub.netloc}",
        "https://checkout.stripe.com",
    }


def test_pages_of_a_logged_in_user_tokens_pdfs_and_csvs_are_never_cached(client, login):
    assert "no-store" not in client.get("/login").headers.get("Cache-Control", "")  # a public page may be cached
    login(client)
    for page in ("/", "/account"):
        response = client.get(page)
        assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store", page
    created = post_form(client, "/account/tokens", {"name": "ci", "scopes": ["read"], "ttl_days": "30"})
    assert "bafp_" in created.get_data(as_text=True)  # the one page that shows the token itself
    assert created.headers["Cache-Control"] == "no-store"
    token = created.get_data(as_text=True).split('id="new-token">')[1].split("<")[0]
    api = client.application.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 200 and api.headers["Cache-Control"] == "no-store"
    static = client.get("/static/vendor/htmx-2.0.11.min.js")
    assert static.headers.get("Cache-Control") != "no-store"  # the portal's own scripts stay cacheable


def test_csv_exports_are_never_cached(client, login, db):
    from portal.identity.models import FactoryRole
    from portal.identity.services import grant_role
    from portal.reports import services as reports

    admin = login(client)
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    name = sorted(reports.TABLES)[0]
    exported = client.get(f"/reports/{name}.csv")
    assert exported.status_code == 200 and exported.mimetype == "text/csv"
    assert exported.headers["Cache-Control"] == "no-store"


def test_trace_is_refused_with_the_methods_a_url_allows(client):
    page = client.open("/login", method="TRACE")
    assert page.status_code == 405
    assert set(page.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    api = client.open("/api/v1/me", method="TRACE")
    assert api.status_code == 405 and api.mimetype == "application/problem+json"
    assert "GET" in api.headers["Allow"]
