"""``portal check`` against real dependencies: all answering, then each one broken in turn.

Every run is the ``portal`` command as an operator types it; each broken dependency is real (a closed
port, a stopped provider process, a database left at an older revision, an HTTP server that is not a hub).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from flask import Flask
from portal_standin.devhub import HubProcess
from portal_standin.devstack import OIDCProviderProcess, free_port
from portal_standin.devstripe import StripeStandIn

from portal.migrations import head_revision, upgrade
from tests.conftest import need_proxy, portal_cli, provider_configs

REPO = Path(__file__).resolve().parents[2]
SERVICE_TOKEN = "check-service-token"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    need_proxy()
    state = tmp_path_factory.mktemp("hub")
    process = HubProcess(
        state,
        service_token=SERVICE_TOKEN,
        env={"PORTAL_HUB_OAUTH_CLIENT_SECRET": "test-secret", "HUB_CULL_IDLE_SECONDS": "0"},
        log_path=state / "hub.log",
    ).start()
    yield process
    process.stop()


@pytest.fixture
def working(app: Flask, oidc_provider: OIDCProviderProcess, hub: HubProcess, stand_in: StripeStandIn):
    """The environment of an installation whose every dependency answers (``stand_in``: the Stripe stand-in)."""
    providers = [p.model_dump(mode="json") for p in provider_configs(oidc_provider)]
    return SimpleNamespace(
        app=app,
        env={
            "PORTAL_OIDC_PROVIDERS": json.dumps(providers),
            "PORTAL_HUB_URL": hub.url,
            "PORTAL_HUB_API_TOKEN": SERVICE_TOKEN,
            "PORTAL_STRIPE_API_BASE": stand_in.url,
        },
    )


def check(working: SimpleNamespace, **changes: str) -> tuple[int, dict[str, str]]:
    """Runs ``portal check``; its exit status and its lines by check name ("OK  ..." or "FAIL ...")."""
    result = portal_cli(working.app, "check", **{**working.env, **changes})
    lines = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        name, _, message = rest.strip().partition(": ")
        lines[name] = f"{status} {message}"
    assert lines, result.stderr
    return result.returncode, lines


def test_every_dependency_answering_passes_every_check(working: SimpleNamespace) -> None:
    status, lines = check(working)
    assert status == 0, lines
    assert set(lines) == {
        "configuration",
        "database",
        "migrations",
        "OIDC provider 'eidas'",
        "OIDC provider 'academic'",
        "OIDC provider 'tara'",
        "hub",
        "Stripe",
    }
    assert all(line.startswith("OK") for line in lines.values()), lines
    assert lines["migrations"] == f"OK the database is at {head_revision()}, as the code expects"
    assert "accepts the portal's token" in lines["hub"]


def test_a_closed_database_port_is_named_without_its_password(working: SimpleNamespace) -> None:
    port = free_port()
    status, lines = check(working, PORTAL_DATABASE_URL=f"postgresql+psycopg://portal:s3cret@127.0.0.1:{port}/portal")
    assert status == 1
    assert lines["database"] == (
        f"FAIL cannot connect to postgresql+psycopg://portal:***@127.0.0.1:{port}/portal: connection refused"
    )
    assert lines["migrations"] == "FAIL not checked: the database cannot be reached"
    assert "s3cret" not in json.dumps(lines)
    assert lines["hub"].startswith("OK") and lines["Stripe"].startswith("OK")  # the others are still checked


def test_a_database_that_does_not_exist_is_reported(working: SimpleNamespace, postgres_url: str) -> None:
    wrong = sa.engine.make_url(postgres_url).set(database="no_such_portal_db").render_as_string(hide_password=False)
    status, lines = check(working, PORTAL_DATABASE_URL=wrong)
    assert status == 1
    assert lines["database"].startswith("FAIL cannot connect to postgresql+psycopg://")
    assert lines["database"].endswith("/no_such_portal_db: that database does not exist")


def test_a_database_at_an_older_revision_is_told_to_upgrade(working: SimpleNamespace, tmp_path: Path) -> None:
    older = tmp_path / "older.db"
    upgrade(f"sqlite:///{older}", "0007")
    status, lines = check(working, PORTAL_DATABASE_URL=f"sqlite:///{older}")
    assert status == 1
    assert lines["database"].startswith("OK")
    assert lines["migrations"] == (
        f"FAIL the database is at 0007, the code expects {head_revision()} — run `portal db upgrade`"
    )


def test_an_unreadable_schema_revision_is_reported_not_a_traceback(working: SimpleNamespace, tmp_path: Path) -> None:
    broken = tmp_path / "broken.db"
    with sa.create_engine(f"sqlite:///{broken}").begin() as connection:  # alembic_version over a dropped table
        connection.exec_driver_sql("CREATE TABLE gone (version_num VARCHAR(32))")
        connection.exec_driver_sql("CREATE VIEW alembic_version AS SELECT version_num FROM gone")
        connection.exec_driver_sql("DROP TABLE gone")
    status, lines = check(working, PORTAL_DATABASE_URL=f"sqlite:///{broken}")
    assert status == 1
    assert lines["database"].startswith("OK")
    assert lines["migrations"] == (
        "FAIL cannot read the schema's revision (table alembic_version): no such table: main.gone"
    )
    assert lines["hub"].startswith("OK") and lines["Stripe"].startswith("OK")  # the checks after it still ran


def test_an_empty_database_is_told_to_upgrade(working: SimpleNamespace, tmp_path: Path) -> None:
    status, lines = check(working, PORTAL_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    assert status == 1
    assert lines["migrations"].startswith("FAIL the database has no schema yet")
    assert lines["migrations"].endswith("run `portal db upgrade`")


def test_a_stopped_oidc_provider_is_named(working: SimpleNamespace, tmp_path: Path) -> None:
    stopped = OIDCProviderProcess(port=free_port(), log_path=tmp_path / "provider.log").start()
    stopped.stop()
    providers = json.loads(working.env["PORTAL_OIDC_PROVIDERS"])
    providers[0]["discovery_url"] = stopped.discovery_url
    status, lines = check(working, PORTAL_OIDC_PROVIDERS=json.dumps(providers))
    assert status == 1
    assert lines["OIDC provider 'eidas'"] == f"FAIL cannot reach {stopped.discovery_url}: connection refused"
    assert lines["OIDC provider 'academic'"].startswith("OK")


def test_a_wrong_discovery_address_reports_the_status_it_got(
    working: SimpleNamespace, oidc_provider: OIDCProviderProcess
) -> None:
    providers = json.loads(working.env["PORTAL_OIDC_PROVIDERS"])
    wrong = f"{oidc_provider.url}/realms/baltic/.well-known/openid-configuration"
    providers[2]["discovery_url"] = wrong
    status, lines = check(working, PORTAL_OIDC_PROVIDERS=json.dumps(providers))
    assert status == 1
    assert lines["OIDC provider 'tara'"] == f"FAIL discovery document at {wrong} answered 404"


def test_a_hub_url_that_is_not_a_hub_answers_404(working: SimpleNamespace, oidc_provider: OIDCProviderProcess) -> None:
    status, lines = check(working, PORTAL_HUB_URL=oidc_provider.url)
    assert status == 1
    assert lines["hub"] == (
        f"FAIL {oidc_provider.url}/hub/api/ answered 404, not JupyterHub's API — is PORTAL_HUB_URL the hub's address?"
    )


def test_a_hub_that_refuses_the_portals_token_says_which_setting_to_fix(working: SimpleNamespace) -> None:
    status, lines = check(working, PORTAL_HUB_API_TOKEN="not-the-service-token")
    assert status == 1
    assert "refused the portal's token (403)" in lines["hub"]
    assert lines["hub"].endswith(
        "PORTAL_HUB_API_TOKEN must have the same value in the portal's and the hub's environment"
    )


def test_a_stripe_stand_in_that_is_down_is_named(working: SimpleNamespace, tmp_path: Path) -> None:
    down = StripeStandIn(free_port(), tmp_path / "stripe", from_scratch=True).start()
    down.stop()
    status, lines = check(working, PORTAL_STRIPE_API_BASE=down.url)
    assert status == 1
    assert lines["Stripe"] == f"FAIL cannot reach {down.url}: connection refused"


def test_invalid_settings_are_explained_and_nothing_else_is_tried(working: SimpleNamespace) -> None:
    status, lines = check(working, PORTAL_ENV="production", PORTAL_SECRET_KEY="", PORTAL_BASE_URL="https://x.eu")
    assert status == 1
    assert list(lines) == ["configuration"]
    assert "PORTAL_SECRET_KEY must be set in production" in lines["configuration"]


def test_a_provider_without_its_client_secret_names_the_variable(working: SimpleNamespace) -> None:
    providers = json.loads(working.env["PORTAL_OIDC_PROVIDERS"])
    providers[1]["client_secret"] = None
    status, lines = check(working, PORTAL_OIDC_PROVIDERS=json.dumps(providers))
    assert status == 1
    assert lines["configuration"] == (
        "FAIL OIDC provider(s) academic have no client secret: set PORTAL_OIDC_ACADEMIC_CLIENT_SECRET"
    )
