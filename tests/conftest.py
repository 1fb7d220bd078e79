"""Shared fixtures: a real local OIDC provider, a migrated database per test, real login flows.

Every login in the tests goes through the portal's own routes and the provider's authorize and token
endpoints; no session is forged.

What each test worker builds once: the Alembic migrations (``migrated_sqlite``, a file every test gets a copy
of) and the OIDC provider process, started only when the first test that logs in asks for it (``oidc_provider``
or ``login``). Each test still gets its own database and its own app. Tests that start Slurm, JupyterHub or
Chromium or need PostgreSQL are marked so by what they use (``pytest_collection_modifyitems``), so that
``-m "not slurm and not hub and not browser"`` leaves them out (the quick loop of docs/development.md).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import traceback
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from flask import Flask
from flask.testing import FlaskClient
from portal_standin.devstack import OIDCProviderProcess, free_port, patience
from portal_standin.devstack_slurm import SlurmCluster, SlurmUnavailable, ensure_installed
from portal_standin.devstripe import StripeStandIn
from sqlmodel import Session

from portal import create_app
from portal.config import OIDCProvider, Settings, load_settings
from portal.identity.models import User
from portal.migrations import upgrade

EIDAS = "http://eidas.europa.eu/LoA/"


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProviderProcess]:
    """One real OIDC provider process for the test worker, started by the first test that asks for it (or for
    ``login``); tests add their users with ``add_user``."""
    log = tmp_path_factory.mktemp("oidc") / "provider.log"
    provider = OIDCProviderProcess(port=free_port(), log_path=log).start()
    yield provider
    provider.stop()


#: The discovery URL in the settings of a test that did not ask for the OIDC provider: nothing answers there, and
#: the path says why, should such a test try to log in.
PROVIDER_NOT_STARTED = "http://127.0.0.1:9/this-test-did-not-ask-for-the-oidc_provider-fixture"


def provider_configs(provider: OIDCProviderProcess | None) -> list[OIDCProvider]:
    """Three configured providers (as in production: eIDAS broker, academic federation, TARA), all
    served by the one local provider process under different client ids (``None``: at ``PROVIDER_NOT_STARTED``)."""
    discovery_url = provider.discovery_url if provider is not None else PROVIDER_NOT_STARTED
    return [
        OIDCProvider(
            name="eidas",
            label="eIDAS",
            discovery_url=discovery_url,
            client_id="portal-eidas",
            client_secret="s1",
            min_acr="low",
        ),
        OIDCProvider(
            name="academic",
            label="MyAccessID",
            discovery_url=discovery_url,
            client_id="portal-academic",
            client_secret="s2",
        ),
        OIDCProvider(
            name="tara",
            label="TARA",
            discovery_url=discovery_url,
            client_id="portal-tara",
            client_secret="s3",
            min_acr="substantial",
        ),
    ]


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once through Alembic; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "portal.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def make_settings(request: pytest.FixtureRequest, tmp_path: Path, migrated_sqlite: Path):
    """``make_settings(**overrides) -> Settings`` for this test's own copy of the migrated database. The login
    providers point at the OIDC provider process when the test uses it (``oidc_provider`` or ``login``, directly or
    through its fixtures); the other tests leave it unstarted and never reach it."""
    provider = request.getfixturevalue("oidc_provider") if "oidc_provider" in request.fixturenames else None

    def factory(**overrides: Any) -> Settings:
        db_file = tmp_path / "portal.db"
        if not db_file.exists():
            shutil.copy(migrated_sqlite, db_file)
        values: dict[str, Any] = {
            "env": "test",
            "instance_path": tmp_path / "instance",
            "database_url": f"sqlite:///{db_file}",
            "secret_key": "test-secret-key",
            "base_url": "http://127.0.0.1:5000",
            "oidc_providers": provider_configs(provider),
        }
        values.update(overrides)
        return load_settings(**values)

    return factory


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    yield application
    application.extensions["portal.engine"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(app: Flask) -> Iterator[Session]:
    with Session(app.extensions["portal.engine"], expire_on_commit=False) as session:
        yield session


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass
class LoginAttempt:
    """The steps of one login, so that tests can tamper with any of them."""

    client: FlaskClient
    provider_name: str
    authorize_url: str = ""
    callback_url: str = ""

    def start(self, next_url: str | None = None) -> LoginAttempt:
        query = f"?next={next_url}" if next_url else ""
        providers = self.client.application.extensions["portal.settings"].oidc_providers
        assert all(p.discovery_url != PROVIDER_NOT_STARTED for p in providers), (
            "this test logs in: ask for the oidc_provider fixture (or login), which starts the provider"
        )
        response = self.client.get(f"/login/{self.provider_name}{query}")
        assert response.status_code == 302, response.data
        self.authorize_url = response.headers["Location"]
        return self

    def authorize(self, sub: str, *, authorize_url: str | None = None) -> LoginAttempt:
        """Log in at the provider as ``sub`` (its non-interactive form POST)."""
        response = requests.post(
            authorize_url or self.authorize_url, data={"sub": sub}, allow_redirects=False, timeout=10
        )
        assert response.status_code == 302, response.text
        self.callback_url = response.headers["Location"]
        return self

    def finish(self, callback_url: str | None = None):
        return self.client.get(_path(callback_url or self.callback_url))


def unique_sub(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def login(oidc_provider: OIDCProviderProcess):
    """``login(client, sub=None, provider="eidas", **claims) -> User``: a full, real OIDC login."""

    def do_login(client: FlaskClient, sub: str | None = None, *, provider: str = "eidas", **claims: Any) -> User:
        sub = sub or unique_sub()
        claims.setdefault("acr", EIDAS + "substantial")
        claims.setdefault("email", f"{sub}@example.eu")
        claims.setdefault("email_verified", True)
        claims.setdefault("given_name", sub.split("-")[0].capitalize())
        claims.setdefault("family_name", "Tester")
        oidc_provider.add_user(sub, **claims)
        response = LoginAttempt(client, provider).start().authorize(sub).finish()
        assert response.status_code == 302, response.get_data(as_text=True)
        with client.session_transaction() as flask_session:
            user_id = int(flask_session["_user_id"])
        with Session(client.application.extensions["portal.engine"], expire_on_commit=False) as db:
            user = db.get(User, user_id)
        assert user is not None
        return user

    return do_login


def csrf_token(client: FlaskClient, page: str = "/account") -> str:
    html = client.get(page).get_data(as_text=True)
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, f"no CSRF token on {page}"
    return match.group(1)


def post_form(
    client: FlaskClient, path: str, data: dict[str, Any] | None = None, *, page: str = "/account", **kwargs: Any
):
    """POST a form the way a browser does: with the CSRF token from a page of the portal."""
    payload = {"csrf_token": csrf_token(client, page), **(data or {})}
    return client.post(path, data=payload, **kwargs)


# --- the hub ----------------------------------------------------------------------------------------------

#: configurable-http-proxy from npm, which scripts/bootstrap installs (``npm ci``).
PROXY = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "configurable-http-proxy"


def need_proxy() -> None:
    """Skip, saying why, when pytest runs without scripts/bootstrap's ``npm ci`` (scripts/test always has it)."""
    if not PROXY.exists():
        pytest.skip("configurable-http-proxy is not installed (npm ci)")


# --- the command line ------------------------------------------------------------------------------------

PORTAL_COMMAND = str(Path(sys.executable).parent / "portal")


def _cli_environment(app: Flask) -> dict[str, str]:
    settings = app.extensions["portal.settings"]
    return {
        "PORTAL_DATABASE_URL": settings.database_url,
        "PORTAL_SECRET_KEY": "x",
        "PORTAL_INSTANCE_PATH": str(settings.instance_path),
        "PORTAL_ENV": "test",
        "PORTAL_LOG_LEVEL": "WARNING",
        "PORTAL_SLURM_CLUSTERS": json.dumps([c.model_dump() for c in settings.slurm_clusters]),
    }


def portal_cli(app: Flask, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The ``portal`` command, as an operator runs it, against the test app's database (and clusters)."""
    environment = {**os.environ, **_cli_environment(app), **env}
    return subprocess.run(
        [PORTAL_COMMAND, *args], capture_output=True, text=True, env=environment, timeout=patience(120), check=False
    )


def portal_cli_in_process(app: Flask, *args: str) -> subprocess.CompletedProcess[str]:
    """The same ``portal`` command run inside the test process on the test app (Flask's CLI runner): the same
    parsing, services, exit status and messages on stderr, without a new interpreter and application per call
    (~2 s of CPU each). For the long lists of bad input; each test file keeps the real process for its main
    path. A command that raises instead of exiting gets the traceback in stderr, as the process would print."""
    from portal.cli import main

    result = app.test_cli_runner(env=_cli_environment(app)).invoke(main, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([PORTAL_COMMAND, *args], result.exit_code, result.stdout, stderr)


# --- e-mail --------------------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """A real SMTP server's handler (aiosmtpd) that keeps every message it receives."""

    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        """Like a real server, it refuses mailboxes it does not have: any local part starting "nobody"."""
        if address.lower().startswith("nobody"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.arrived:
            self.messages.append(message_from_bytes(envelope.original_content, policy=policy.default))
            self.arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, to: str, timeout: float = 10.0) -> EmailMessage:
        def find() -> EmailMessage | None:
            return next((m for m in self.messages if m["To"] == to), None)

        with self.arrived:
            self.arrived.wait_for(lambda: find() is not None, timeout=patience(timeout))
            found = find()
        assert found is not None, f"no e-mail to {to} within {timeout} s; got {[m['To'] for m in self.messages]}"
        return found

    @staticmethod
    def link(message: EmailMessage) -> str:
        """The portal path of the invitation link in a message."""
        match = re.search(r"https?://[^/\s]+(/invitations/\S+)", message.get_content())
        assert match, message.get_content()
        return match.group(1)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


# --- PostgreSQL ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this run, dropped afterwards.

    ``PORTAL_TEST_DATABASE_URL`` names the server (``.ci/run`` and ``scripts/test`` set it); the tests
    that need PostgreSQL are skipped, saying so, when it is unset.
    """
    base = os.environ.get("PORTAL_TEST_DATABASE_URL")
    if not base:
        pytest.skip("PORTAL_TEST_DATABASE_URL is not set; scripts/test sets it to the local PostgreSQL")
    name = f"portal_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as connection:
        connection.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
        )
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StripeStandIn]:
    """The local Stripe stand-in (localstripe with Checkout Sessions), from scratch for each test module."""
    server = StripeStandIn(free_port(), tmp_path_factory.mktemp("stripe"), from_scratch=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real Slurm cluster (``factory``: 8 CPUs, 2 fake GPUs, partitions ``debug`` and ``gpu``) for the test
    worker's session, with its own slurmdbd database; gone afterwards. Each test uses a site of its own, so
    its accounts are its own on the shared cluster."""
    try:
        ensure_installed()
    except SlurmUnavailable as exc:
        pytest.skip(f"Slurm cannot run here: {exc}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cluster_name="factory")
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"Slurm cannot run here: {exc}")
    yield cluster
    cluster.destroy()


# --- markers from what a test uses -----------------------------------------------------------------------

#: The marker a test gets when its code, its fixtures' code or the helpers of the test modules they call name one
#: of these: what starts Slurm, a JupyterHub or Chromium.
MARK_BY_NAME = {"SlurmCluster": "slurm", "HubProcess": "hub", "sync_playwright": "browser"}
#: The marker a test gets when it uses one of these fixtures (directly or through other fixtures).
MARK_BY_FIXTURE = {"slurm_cluster": "slurm", "postgres_url": "postgres"}
TESTS = str(Path(__file__).parent)


def _names_used(code: types.CodeType) -> set[str]:
    """The global and imported names ``code`` and the functions defined in it refer to."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_used(constant)
    return names


def _marks_of(function: Any, seen: dict[Any, set[str]]) -> set[str]:
    """The markers that ``function`` needs, following the calls it makes to functions of the test modules."""
    function = inspect.unwrap(getattr(function, "__func__", function))
    if function in seen:
        return seen[function]
    seen[function] = marks = set()
    code = getattr(function, "__code__", None)
    if code is None:
        return marks
    scope = getattr(function, "__globals__", {})
    for name in _names_used(code):
        if name in MARK_BY_NAME:
            marks.add(MARK_BY_NAME[name])
        called = scope.get(name)
        if inspect.isfunction(called) and called.__code__.co_filename.startswith(TESTS):
            marks |= _marks_of(called, seen)
    return marks


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test ``slurm``, ``hub``, ``browser`` or ``postgres`` when it uses what those markers stand for, so
    that the markers cannot drift from the code: ``-m "not slurm and not hub and not browser"`` leaves out every
    test that starts one of them, however it does."""
    seen: dict[Any, set[str]] = {}
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        marks = {MARK_BY_FIXTURE[name] for name in item.fixturenames if name in MARK_BY_FIXTURE}
        marks |= _marks_of(item.function, seen)
        for name in item.fixturenames:
            for definition in item._fixtureinfo.name2fixturedefs.get(name, ()):
                marks |= _marks_of(definition.func, seen)
        for mark in sorted(marks):
            if item.get_closest_marker(mark) is None:
                item.add_marker(mark)
