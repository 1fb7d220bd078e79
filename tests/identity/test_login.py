"""Logging in with an OIDC provider: what is recorded, how identities are matched and linked, and every
way a login is refused.

Each login runs the real authorization-code flow against a local ``oidc-provider-mock`` process; tests
that attack the flow tamper with one of its steps (the authorize URL, the provider's answer, the token
request) and check that the user sees a refusal page and ends up without a session.
"""

from __future__ import annotations

import base64
import html
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
import time_machine
from flask.testing import FlaskClient
from portal_standin.devstack import OIDCProviderProcess, free_port
from sqlmodel import Session, func, select

from portal import create_app
from portal.config import OIDCProvider
from portal.identity.models import ExternalIdentity, Login, User
from tests.conftest import EIDAS, LoginAttempt, post_form, provider_configs, unique_sub

# --- helpers -------------------------------------------------------------------------------------------


def text_of(response) -> str:
    """The page as a user reads it (entities such as &#39; decoded)."""
    return html.unescape(response.get_data(as_text=True))


def is_logged_in(client: FlaskClient) -> bool:
    """Whether the browser has a session: the account page either shows or sends it to the login page."""
    response = client.get("/account")
    if response.status_code == 200:
        return True
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/login"
    with client.session_transaction() as flask_session:
        assert "_user_id" not in flask_session
        assert "login_id" not in flask_session
    return False


def count(db: Session, model: type[Any], *where: Any) -> int:
    db.expire_all()
    return db.exec(select(func.count()).select_from(model).where(*where)).one()


def identity_of(db: Session, provider: str, subject: str) -> ExternalIdentity | None:
    db.expire_all()
    return db.exec(
        select(ExternalIdentity).where(ExternalIdentity.provider == provider, ExternalIdentity.subject == subject)
    ).first()


def session_user_id(client: FlaskClient) -> int:
    with client.session_transaction() as flask_session:
        return int(flask_session["_user_id"])


def session_login_id(client: FlaskClient) -> int:
    with client.session_transaction() as flask_session:
        return int(flask_session["login_id"])


def with_query(url: str, **changes: str) -> str:
    """``url`` with some query parameters replaced."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def register(provider: OIDCProviderProcess, prefix: str = "user", **claims: Any) -> str:
    """A new user at the provider; returns their subject."""
    sub = unique_sub(prefix)
    provider.add_user(sub, **claims)
    return sub


def assert_refused(response, client: FlaskClient, db: Session, *, logins_before: int, says: str, status: int = 403):
    """The user sees a refusal page that explains why, and has no session; no login was recorded."""
    page = text_of(response)
    assert response.status_code == status, page
    assert says in page
    assert "You are not logged in." in page
    assert not is_logged_in(client)
    assert count(db, Login) == logins_before


@pytest.fixture
def client_for(make_settings, oidc_provider: OIDCProviderProcess) -> Iterator[Any]:
    """``client_for(*extra_providers)``: a browser on a portal configured with the usual providers and more."""
    apps = []

    def factory(*extra: OIDCProvider) -> FlaskClient:
        app = create_app(make_settings(oidc_providers=[*provider_configs(oidc_provider), *extra]))
        apps.append(app)
        return app.test_client()

    yield factory
    for app in apps:
        app.extensions["portal.engine"].dispose()


@pytest.fixture(scope="module")
def short_lived_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProviderProcess]:
    """A second provider process whose ID tokens live for 60 seconds."""
    log = tmp_path_factory.mktemp("oidc-short") / "provider.log"
    provider = OIDCProviderProcess(port=free_port(), token_max_age=60, log_path=log).start()
    yield provider
    provider.stop()


class TokenRelay:
    """A real HTTP token endpoint in front of the provider that redeems codes as another client.

    It stands for an attacker who obtained a code issued to their own client ("intruder") and has the
    portal redeem it: the provider answers with an ID token whose audience is the intruder's client.
    """

    def __init__(self, upstream: str, *, client_id: str, client_secret: str) -> None:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                relay.seen_client_ids.append(_basic_user(self.headers.get("Authorization")) or form.get("client_id"))
                form.pop("client_secret", None)
                if "client_id" in form:
                    form["client_id"] = client_id
                answer = requests.post(upstream, data=form, auth=(client_id, client_secret), timeout=10)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.seen_client_ids: list[str | None] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/token"

    def __enter__(self) -> TokenRelay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _basic_user(header: str | None) -> str | None:
    if not header or not header.startswith("Basic "):
        return None
    return base64.b64decode(header[6:]).decode().split(":", 1)[0]


# --- a successful login --------------------------------------------------------------------------------


def test_login_records_who_the_provider_vouched_for_and_how(client, oidc_provider, db):
    auth_time = int(time.time()) - 30
    sub = register(
        oidc_provider,
        "mari",
        acr=EIDAS + "substantial",
        amr=["idcard"],
        auth_time=auth_time,
        given_name="Mari",
        family_name="Maasikas",
        email="mari@example.ee",
        email_verified=True,
        birthdate="1980-01-08",
        person_identifier="EE/EE/48001080000",
        voperson_external_affiliation="member@ut.ee",
        eduperson_entitlement=["urn:geant:example.org:group:baltic-ai", "urn:geant:example.org:group:hpc"],
    )

    response = LoginAttempt(client, "eidas").start().authorize(sub).finish()

    assert response.status_code == 302
    expected_attributes = {
        "given_name": "Mari",
        "family_name": "Maasikas",
        "email": "mari@example.ee",
        "birthdate": "1980-01-08",
        "person_identifier": "EE/EE/48001080000",
        "external_affiliation": ["member@ut.ee"],
        "entitlement": ["urn:geant:example.org:group:baltic-ai", "urn:geant:example.org:group:hpc"],
    }
    login = db.get(Login, session_login_id(client))
    assert login is not None
    assert (login.provider, login.subject) == ("eidas", sub)
    assert login.acr == EIDAS + "substantial"
    assert login.level == "substantial"
    assert login.amr == ["idcard"]
    assert login.auth_time == datetime.fromtimestamp(auth_time, UTC)
    assert login.attributes == expected_attributes

    identity = identity_of(db, "eidas", sub)
    assert identity is not None
    assert identity.user_id == login.user_id == session_user_id(client)
    assert identity.level == "substantial"
    assert identity.attributes == expected_attributes

    user = db.get(User, login.user_id)
    assert user is not None
    assert (user.display_name, user.email) == ("Mari Maasikas", "mari@example.ee")

    account = text_of(client.get("/account"))
    assert "Logged in with eIDAS at level of assurance" in account
    assert '<strong class="level level-substantial">substantial</strong> (idcard)' in account


def test_tara_plain_high_acr_is_level_high(client, login, db):
    user = login(client, provider="tara", acr="high")

    recorded = db.get(Login, session_login_id(client))
    assert recorded is not None
    assert (recorded.provider, recorded.acr, recorded.level) == ("tara", "high", "high")
    assert recorded.user_id == user.id
    assert '<strong class="level level-high">high</strong>' in text_of(client.get("/account"))


def test_an_unverified_email_is_not_recorded(client, login, db):
    user = login(client, email="claimed@example.eu", email_verified=False, given_name="Ann", family_name="Lee")

    recorded = db.get(Login, session_login_id(client))
    assert recorded is not None
    assert "email" not in recorded.attributes
    assert user.email is None
    assert user.display_name == "Ann Lee"


def test_logging_in_again_finds_the_same_user_and_records_a_new_login(client_for, login, db):
    sub = unique_sub("again")
    first = login(client_for(), sub, family_name="Old")
    second = login(client_for(), sub, family_name="New")

    assert second.id == first.id
    assert count(db, User, User.id == first.id) == 1
    assert count(db, Login, Login.user_id == first.id) == 2
    identity = identity_of(db, "eidas", sub)
    assert identity is not None
    assert identity.attributes["family_name"] == "New"  # the latest login's attributes


# --- identities are keyed on (provider, subject) -------------------------------------------------------


def test_two_subjects_with_the_same_email_are_two_users(client_for, login, db):
    first = login(client_for(), email="shared@example.eu")
    second = login(client_for(), email="shared@example.eu")

    assert first.id != second.id
    assert count(db, User, User.email == "shared@example.eu") == 2


def test_the_same_subject_at_two_providers_is_two_users(client_for, login, db):
    sub = unique_sub("twin")
    at_eidas = login(client_for(), sub, provider="eidas")
    at_academic = login(client_for(), sub, provider="academic")

    assert at_eidas.id != at_academic.id
    assert identity_of(db, "eidas", sub).user_id == at_eidas.id
    assert identity_of(db, "academic", sub).user_id == at_academic.id


# --- linking identities --------------------------------------------------------------------------------


def link(client: FlaskClient, provider: str, sub: str):
    """Click "Link <provider>" on the account page and log in there as ``sub``."""
    response = post_form(client, f"/account/identities/link/{provider}")
    assert response.status_code == 302, response.data
    attempt = LoginAttempt(client, provider, authorize_url=response.headers["Location"])
    return attempt.authorize(sub).finish()


def test_a_linked_identity_logs_in_as_the_same_user(client_for, login, oidc_provider, db):
    eidas_sub = unique_sub("citizen")
    browser = client_for()
    me = login(browser, eidas_sub, provider="eidas")
    academic_sub = register(oidc_provider, "scholar", acr="https://refeds.org/assurance/IAP/medium")

    response = link(browser, "academic", academic_sub)

    assert response.status_code == 302
    assert response.headers["Location"] == "/account"
    account = text_of(browser.get("/account"))
    assert "Your MyAccessID identity is now linked to your account." in account
    assert academic_sub in account
    assert session_user_id(browser) == me.id
    db.expire_all()
    linked = db.exec(select(ExternalIdentity).where(ExternalIdentity.user_id == me.id)).all()
    assert {(i.provider, i.subject) for i in linked} == {("eidas", eidas_sub), ("academic", academic_sub)}

    assert login(client_for(), academic_sub, provider="academic").id == me.id
    assert login(client_for(), eidas_sub, provider="eidas").id == me.id
    assert count(db, User, User.id == me.id) == 1


def test_linking_needs_the_form_with_its_csrf_token(client, login, db):
    login(client)

    response = client.post("/account/identities/link/academic")

    assert response.status_code == 400
    assert "Form expired" in text_of(response)


def test_linking_an_identity_of_another_user_is_refused_and_changes_nothing(client_for, login, db):
    other_sub = unique_sub("other")
    other = login(client_for(), other_sub, provider="academic")
    browser = client_for()
    me = login(browser, provider="eidas")
    logins_before = count(db, Login)

    response = link(browser, "academic", other_sub)

    assert response.status_code == 409
    assert "This MyAccessID account is already linked to another portal user." in text_of(response)
    assert identity_of(db, "academic", other_sub).user_id == other.id
    assert count(db, ExternalIdentity, ExternalIdentity.user_id == me.id) == 1
    assert count(db, Login) == logins_before
    assert session_user_id(browser) == me.id  # still logged in as before
    assert login(client_for(), other_sub, provider="academic").id == other.id


def test_the_only_identity_cannot_be_unlinked(client, login, db):
    me = login(client)
    identity = db.exec(select(ExternalIdentity).where(ExternalIdentity.user_id == me.id)).one()

    response = post_form(client, f"/account/identities/{identity.id}/unlink")

    assert response.status_code == 409
    assert "This is your only identity" in text_of(response)
    assert count(db, ExternalIdentity, ExternalIdentity.user_id == me.id) == 1


def test_a_second_identity_can_be_unlinked_and_no_longer_logs_in_as_the_user(client_for, login, oidc_provider, db):
    browser = client_for()
    me = login(browser, provider="eidas")
    academic_sub = register(oidc_provider, "scholar")
    link(browser, "academic", academic_sub)
    identity = identity_of(db, "academic", academic_sub)
    assert identity is not None

    response = post_form(browser, f"/account/identities/{identity.id}/unlink")

    assert response.status_code == 302
    assert identity_of(db, "academic", academic_sub) is None
    assert login(client_for(), academic_sub, provider="academic").id != me.id


def test_the_identity_of_the_current_login_cannot_be_unlinked(client_for, login, oidc_provider, db):
    browser = client_for()
    me = login(browser, provider="eidas")
    link(browser, "academic", register(oidc_provider, "scholar"))
    current = db.get(Login, session_login_id(browser))
    assert current is not None

    response = post_form(browser, f"/account/identities/{current.identity_id}/unlink")

    assert response.status_code == 409
    assert "You are logged in with this identity" in text_of(response)
    assert count(db, ExternalIdentity, ExternalIdentity.user_id == me.id) == 2
    assert "level-substantial" in text_of(browser.get("/account"))


# --- refused logins ------------------------------------------------------------------------------------


def test_a_tampered_state_is_refused(client, oidc_provider, db):
    logins_before = count(db, Login)
    attempt = LoginAttempt(client, "eidas").start().authorize(register(oidc_provider, acr=EIDAS + "high"))

    response = attempt.finish(with_query(attempt.callback_url, state="forged-state"))

    assert_refused(response, client, db, logins_before=logins_before, says="state mismatch")


def test_a_tampered_nonce_is_refused(client, oidc_provider, db):
    logins_before = count(db, Login)
    attempt = LoginAttempt(client, "eidas").start()
    forged = with_query(attempt.authorize_url, nonce=f"forged-{uuid.uuid4().hex}")

    response = attempt.authorize(register(oidc_provider, acr=EIDAS + "high"), authorize_url=forged).finish()

    assert_refused(response, client, db, logins_before=logins_before, says="nonce mismatch")


def test_a_callback_replayed_after_logout_is_refused(client, oidc_provider, db):
    attempt = LoginAttempt(client, "eidas").start().authorize(register(oidc_provider))
    assert attempt.finish().status_code == 302
    assert post_form(client, "/logout").status_code == 302
    logins_before = count(db, Login)

    response = attempt.finish()

    assert_refused(response, client, db, logins_before=logins_before, says="state mismatch")


def test_a_callback_replayed_in_another_browser_is_refused(client_for, oidc_provider, db):
    victim = client_for()
    attempt = LoginAttempt(victim, "eidas").start().authorize(register(oidc_provider))
    assert attempt.finish().status_code == 302
    logins_before = count(db, Login)

    bare_browser = client_for()
    assert_refused(
        LoginAttempt(bare_browser, "eidas").finish(attempt.callback_url),
        bare_browser,
        db,
        logins_before=logins_before,
        says="state mismatch",
    )

    mid_login_browser = client_for()
    LoginAttempt(mid_login_browser, "eidas").start()
    assert_refused(
        LoginAttempt(mid_login_browser, "eidas").finish(attempt.callback_url),
        mid_login_browser,
        db,
        logins_before=logins_before,
        says="state mismatch",
    )


def test_a_used_code_is_refused_even_with_a_valid_state(client_for, oidc_provider, db):
    victim = client_for()
    stolen = LoginAttempt(victim, "eidas").start().authorize(register(oidc_provider))
    assert stolen.finish().status_code == 302
    logins_before = count(db, Login)

    thief = client_for()
    own = LoginAttempt(thief, "eidas").start()
    replay = with_query(stolen.callback_url, state=query_of(own.authorize_url)["state"])
    response = own.finish(replay)

    assert_refused(response, thief, db, logins_before=logins_before, says="The login code was already used")


def test_an_id_token_from_another_issuer_is_refused(client_for, oidc_provider, db):
    # Discovery names http://127.0.0.1:PORT as the issuer; the token endpoint reached as localhost:PORT
    # signs ID tokens with the same key but the issuer http://localhost:PORT.
    elsewhere = OIDCProvider(
        name="elsewhere",
        label="Elsewhere",
        discovery_url=oidc_provider.discovery_url,
        client_id="portal-elsewhere",
        client_secret="s4",
        token_url=f"http://localhost:{oidc_provider.port}/oauth2/token",
    )
    browser = client_for(elsewhere)
    logins_before = count(db, Login)

    response = LoginAttempt(browser, "elsewhere").start().authorize(register(oidc_provider)).finish()

    assert_refused(response, browser, db, logins_before=logins_before, says="issuer mismatch")
    assert count(db, ExternalIdentity, ExternalIdentity.provider == "elsewhere") == 0


def test_an_id_token_for_another_client_is_refused(client_for, oidc_provider, db):
    with TokenRelay(f"{oidc_provider.url}/oauth2/token", client_id="intruder", client_secret="x") as relay:
        relayed = OIDCProvider(
            name="relayed",
            label="Relayed",
            discovery_url=oidc_provider.discovery_url,
            client_id="portal-relayed",
            client_secret="s5",
            token_url=relay.url,
        )
        browser = client_for(relayed)
        logins_before = count(db, Login)
        attempt = LoginAttempt(browser, "relayed").start()
        as_intruder = with_query(attempt.authorize_url, client_id="intruder")

        response = attempt.authorize(register(oidc_provider), authorize_url=as_intruder).finish()

        assert relay.seen_client_ids == ["portal-relayed"]  # the portal's own token request went through it
    assert_refused(response, browser, db, logins_before=logins_before, says="audience mismatch")
    assert count(db, ExternalIdentity, ExternalIdentity.provider == "relayed") == 0


def _short_lived(provider: OIDCProviderProcess) -> OIDCProvider:
    return OIDCProvider(
        name="shortlived",
        label="Short-lived",
        discovery_url=provider.discovery_url,
        client_id="portal-short",
        client_secret="s6",
    )


def test_an_expired_id_token_is_refused(client_for, short_lived_provider, db):
    browser = client_for(_short_lived(short_lived_provider))
    logins_before = count(db, Login)
    attempt = LoginAttempt(browser, "shortlived").start().authorize(register(short_lived_provider))

    # The portal's clock is 10 minutes ahead from the callback on; the checks stay in that time, since a
    # session cookie signed then would look as if it came from the future once the clock is set back.
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10)):
        response = attempt.finish()

        assert_refused(response, browser, db, logins_before=logins_before, says="The ID token has expired")


def test_a_clock_a_little_ahead_of_the_provider_is_tolerated(client_for, short_lived_provider, db):
    browser = client_for(_short_lived(short_lived_provider))
    attempt = LoginAttempt(browser, "shortlived").start().authorize(register(short_lived_provider))

    # The token expires 60 s after issue; 90 s later is within the 60 s leeway.
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=90)):
        response = attempt.finish()

        assert response.status_code == 302
        assert is_logged_in(browser)


def test_a_too_low_level_of_assurance_is_refused_where_substantial_is_required(client, oidc_provider, db):
    logins_before = count(db, Login)
    sub = register(oidc_provider, "pin", acr="low")

    response = LoginAttempt(client, "tara").start().authorize(sub).finish()

    assert_refused(
        response,
        client,
        db,
        logins_before=logins_before,
        says="TARA confirmed your identity at level 'low', but this portal needs at least 'substantial'",
    )
    assert "Level of assurance too low" in text_of(response)
    assert identity_of(db, "tara", sub) is None


def test_an_unknown_level_of_assurance_is_refused(client, oidc_provider, db):
    logins_before = count(db, Login)
    sub = register(oidc_provider, "odd", acr="urn:example:loa:gold")

    response = LoginAttempt(client, "eidas").start().authorize(sub).finish()

    assert_refused(
        response,
        client,
        db,
        logins_before=logins_before,
        says="eIDAS reported a level of assurance (urn:example:loa:gold) this portal does not recognise.",
    )
    assert identity_of(db, "eidas", sub) is None


@pytest.mark.usefixtures("oidc_provider")  # its logins start at the provider
def test_declining_at_the_provider_is_refused(client, db):
    logins_before = count(db, Login)
    attempt = LoginAttempt(client, "eidas").start()
    answer = requests.post(attempt.authorize_url, data={"action": "deny"}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    assert query_of(answer.headers["Location"])["error"] == "access_denied"

    response = attempt.finish(answer.headers["Location"])

    assert_refused(response, client, db, logins_before=logins_before, says="You declined the login at the provider.")


def test_an_unknown_provider_is_not_found(client):
    assert client.get("/login/nowhere").status_code == 404


# --- where the user lands after login ------------------------------------------------------------------


def start_with_next(client: FlaskClient, provider: str, target: str) -> LoginAttempt:
    response = client.get(f"/login/{provider}", query_string={"next": target})
    assert response.status_code == 302
    return LoginAttempt(client, provider, authorize_url=response.headers["Location"])


def test_after_login_the_user_lands_on_the_page_they_asked_for(client, oidc_provider):
    response = start_with_next(client, "eidas", "/account?tab=tokens").authorize(register(oidc_provider)).finish()

    assert response.status_code == 302
    assert response.headers["Location"] == "/account?tab=tokens"


def test_the_login_page_passes_the_requested_page_on_to_every_provider(client):
    page = text_of(client.get("/login", query_string={"next": "/account"}))

    for name in ("eidas", "academic", "tara"):
        assert f'href="/login/{name}?next=/account"' in page


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example.com/phish",
        "//evil.example.com/phish",
        "http:/evil.example.com",
        "javascript:alert(1)",
        "/\t/evil.example.com",
    ],
)
def test_a_next_pointing_to_another_site_is_ignored(client, oidc_provider, target):
    response = start_with_next(client, "eidas", target).authorize(register(oidc_provider)).finish()

    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert is_logged_in(client)


def test_a_next_with_a_backslash_stays_on_the_portal(client, oidc_provider):
    # Browsers read "/\host" as "//host"; the redirect must not send the backslash unencoded.
    response = start_with_next(client, "eidas", "/\\evil.example.com").authorize(register(oidc_provider)).finish()

    location = response.headers["Location"]
    assert location.startswith("/")
    assert not location.startswith("//")
    assert "\\" not in location
    assert urlsplit(location).netloc == ""


# --- logout --------------------------------------------------------------------------------------------


def test_logout_needs_a_post_with_csrf_and_ends_the_session(client, login):
    login(client)

    assert client.get("/logout").status_code == 405
    assert is_logged_in(client)
    assert client.post("/logout").status_code == 400
    assert is_logged_in(client)

    response = post_form(client, "/logout")

    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert not is_logged_in(client)
    with client.session_transaction() as flask_session:
        assert not any(key.startswith("_state_") for key in flask_session)


# --- the login page ------------------------------------------------------------------------------------


def test_the_login_page_lists_every_configured_provider(client_for, oidc_provider):
    extra = OIDCProvider(
        name="lv-eparaksts",
        label="Latvija.lv eParaksts",
        discovery_url=oidc_provider.discovery_url,
        client_id="portal-lv",
        min_acr="high",
    )
    page = text_of(client_for(extra).get("/login"))

    for name, label in [
        ("eidas", "eIDAS"),
        ("academic", "MyAccessID"),
        ("tara", "TARA"),
        ("lv-eparaksts", "Latvija.lv eParaksts"),
    ]:
        assert f'href="/login/{name}">{label}</a>' in page
    assert "requires level substantial" in page
    assert "requires level high" in page


def test_abandoned_login_attempts_do_not_grow_the_session_cookie_and_the_newest_still_works(client, oidc_provider):
    sub = unique_sub()
    oidc_provider.add_user(sub, email=f"{sub}@example.eu", email_verified=True, acr=EIDAS + "substantial")
    abandoned = [LoginAttempt(client, "eidas").start() for _ in range(10)]  # tabs opened and left
    with client.session_transaction() as flask_session:
        assert len([key for key in flask_session if key.startswith("_state_")]) == 3
    assert len(client.get_cookie("portal_session").value) < 4096 - 1024  # room for the rest of the session

    oldest = abandoned[0].authorize(sub).finish()  # its state was dropped: refused like a tampered one
    assert oldest.status_code == 403 and "_user_id" not in _session_keys(client)
    assert abandoned[-1].authorize(sub).finish().status_code == 302  # the newest attempt logs in
    assert "_user_id" in _session_keys(client)


def _session_keys(client) -> set[str]:
    with client.session_transaction() as flask_session:
        return set(flask_session.keys())
