"""Settings (environment and TOML), their documentation, and the ``portal`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from portal_standin.devstack import patience
from pydantic import ValidationError

from portal.config import AssuranceLevel, OIDCProvider, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PORTAL = str(Path(sys.executable).parent / "portal")


def test_every_setting_is_documented_in_the_settings_reference():
    reference = (ROOT / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"`PORTAL_{name.upper()}`" in reference, f"PORTAL_{name.upper()} is not in docs/settings.md"
    for name in OIDCProvider.model_fields:
        assert f"`{name}`" in reference, f"provider key {name} is not in docs/settings.md"


def test_settings_come_from_toml_and_the_environment_wins(tmp_path, monkeypatch):
    config = tmp_path / "portal.toml"
    config.write_text(
        'base_url = "https://portal.example.eu/"\nsmtp_port = 2525\n'
        '[[oidc_providers]]\nname = "tara"\nlabel = "TARA"\n'
        'discovery_url = "https://tara.example/.well-known/openid-configuration"\nclient_id = "portal"\n'
        'min_acr = "substantial"\n'
    )
    monkeypatch.setenv("PORTAL_CONFIG", str(config))
    monkeypatch.setenv("PORTAL_SMTP_PORT", "587")
    monkeypatch.setenv("PORTAL_OIDC_TARA_CLIENT_SECRET", "from-the-environment")
    settings = Settings()
    assert settings.base_url == "https://portal.example.eu"
    assert settings.smtp_port == 587
    assert settings.secure_cookies
    (tara,) = settings.oidc_providers
    assert tara.client_secret == "from-the-environment"
    assert tara.min_acr == AssuranceLevel.SUBSTANTIAL


#: What a production installation sets (secrets from the environment, long and random).
PRODUCTION = {
    "env": "production",
    "secret_key": "k" * 40,
    "base_url": "https://portal.example.eu",
    "database_url": "postgresql+psycopg://portal@db/portal",
    "oidc_providers": [
        OIDCProvider(
            name="eidas", label="eIDAS", discovery_url="https://id.example.eu/x", client_id="c", client_secret="s" * 40
        )
    ],
    "stripe_api_key": "sk_live_x",
    "stripe_webhook_secret": "whsec_live",
    "metrics_token": "m" * 40,
    "hub_oauth_client_secret": "h" * 40,
    "hub_spawn_check_token": "t" * 40,
    "hub_api_token": "a" * 40,
}


def test_production_refuses_insecure_defaults():
    with pytest.raises(ValidationError, match="PORTAL_SECRET_KEY"):
        load_settings(env="production", base_url="https://portal.example.eu")
    with pytest.raises(ValidationError, match="https"):
        load_settings(env="production", secret_key="x" * 40, base_url="http://portal.example.eu")
    with pytest.raises(ValidationError, match="PORTAL_STRIPE_API_KEY"):
        load_settings(env="production", secret_key="x" * 40, base_url="https://portal.example.eu")
    assert load_settings(**PRODUCTION).env == "production"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"database_url": ""}, "PORTAL_DATABASE_URL must name a PostgreSQL database in production, not SQLite"),
        ({"database_url": "sqlite:////srv/portal.db"}, "not SQLite"),
        ({"secret_key": "x"}, "PORTAL_SECRET_KEY must be at least 32 characters long"),
        ({"metrics_token": "short-token"}, "PORTAL_METRICS_TOKEN must be at least 32 characters long"),
        ({"hub_api_token": "change-me"}, "PORTAL_HUB_API_TOKEN still hold the example file's placeholder"),
        ({"hub_spawn_check_token": "CHANGE-ME-" + "x" * 30}, "PORTAL_HUB_SPAWN_CHECK_TOKEN still hold"),
        ({"secret_key": "change-me-" + "x" * 40}, "PORTAL_SECRET_KEY still hold the example file's placeholder"),
        ({"oidc_providers": []}, "PORTAL_OIDC_PROVIDERS is empty: nobody could log in"),
    ],
)
def test_production_refuses_to_start_with_each_unsafe_setting_saying_which(change, says):
    with pytest.raises(ValidationError, match="production refuses to start") as refused:
        load_settings(**{**PRODUCTION, **change})
    assert says in str(refused.value)


def test_production_names_every_problem_at_once():
    with pytest.raises(ValidationError) as refused:
        load_settings(**{**PRODUCTION, "secret_key": "short", "database_url": "", "oidc_providers": []})
    message = str(refused.value)
    assert "PORTAL_SECRET_KEY" in message and "SQLite" in message and "PORTAL_OIDC_PROVIDERS" in message


def test_production_refuses_secrets_in_the_toml_file(tmp_path, monkeypatch):
    config = tmp_path / "portal.toml"
    config.write_text(
        f'hub_api_token = "{"f" * 40}"\n[[oidc_providers]]\nname = "eidas"\nlabel = "eIDAS"\n'
        f'discovery_url = "https://id.example.eu/x"\nclient_id = "c"\nclient_secret = "{"s" * 40}"\n'
    )
    monkeypatch.setenv("PORTAL_CONFIG", str(config))
    values = {k: v for k, v in PRODUCTION.items() if k not in ("hub_api_token", "oidc_providers")}
    with pytest.raises(ValidationError) as refused:
        Settings(**values)
    assert f"{config} holds secrets (hub_api_token, oidc_providers[eidas].client_secret)" in str(refused.value)
    assert "move them to the environment" in str(refused.value)
    config.write_text(
        '[[oidc_providers]]\nname = "eidas"\nlabel = "eIDAS"\n'
        'discovery_url = "https://id.example.eu/x"\nclient_id = "c"\n'
    )
    monkeypatch.setenv("PORTAL_OIDC_EIDAS_CLIENT_SECRET", "s" * 40)
    assert Settings(**values).oidc_providers[0].client_secret == "s" * 40  # the same, from the environment


def test_production_refuses_to_start_with_a_clear_message_on_the_command_line(tmp_path):
    result = run_portal(
        "db",
        "upgrade",
        env={
            "PORTAL_ENV": "production",
            "PORTAL_SECRET_KEY": "x",
            "PORTAL_BASE_URL": "https://portal.example.eu",
            "PORTAL_INSTANCE_PATH": str(tmp_path),
        },
    )
    assert result.returncode != 0
    assert "production refuses to start" in result.stderr
    assert "PORTAL_SECRET_KEY must be at least 32 characters long" in result.stderr
    assert "Traceback" not in result.stderr


def test_acr_values_map_to_levels_per_provider():
    provider = OIDCProvider(
        name="corp", label="Corp", discovery_url="https://x", client_id="c", acr_map={"urn:corp:mfa": "substantial"}
    )
    assert provider.level_for("http://eidas.europa.eu/LoA/high") == AssuranceLevel.HIGH
    assert provider.level_for("substantial") == AssuranceLevel.SUBSTANTIAL
    assert provider.level_for("urn:corp:mfa") == AssuranceLevel.SUBSTANTIAL
    assert provider.level_for(None) == AssuranceLevel.LOW
    assert provider.level_for("urn:unknown") is None


def run_portal(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PORTAL, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=patience(60), check=False
    )


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    return {"PORTAL_INSTANCE_PATH": str(tmp_path / "instance"), "PORTAL_SECRET_KEY": "cli-test", "PORTAL_ENV": "test"}


def test_db_upgrade_then_grant_role_to_a_user_who_has_logged_in(cli_env, tmp_path):
    result = run_portal("db", "upgrade", env=cli_env)
    assert result.returncode == 0, result.stderr
    from portal import create_app
    from portal.db import session_scope
    from portal.identity.models import FactoryRole
    from portal.identity.services import provision_user

    settings = load_settings(instance_path=tmp_path / "instance", secret_key="cli-test", env="test")
    app = create_app(settings)
    provider = OIDCProvider(name="eidas", label="eIDAS", discovery_url="https://x", client_id="c")
    with session_scope(app.extensions["portal.engine"]) as db:
        provision_user(
            db, provider=provider, subject="PL/PL/1", display_name="Ewa Admin", email="ewa@factory.example.eu"
        )

    result = run_portal(
        "users", "grant-role", "EWA@factory.example.eu", "admin", "--reason", "New head of operations", env=cli_env
    )
    assert result.returncode == 0, result.stderr
    assert "Ewa Admin <ewa@factory.example.eu> is now admin" in result.stdout
    from portal.authz import factory_roles
    from portal.identity.services import find_user_by_email

    with session_scope(app.extensions["portal.engine"]) as db:
        assert factory_roles(db, find_user_by_email(db, "ewa@factory.example.eu")) == {FactoryRole.ADMIN}


def test_grant_role_to_an_unknown_address_fails_with_a_message(cli_env):
    assert run_portal("db", "upgrade", env=cli_env).returncode == 0
    result = run_portal("users", "grant-role", "nobody@example.eu", "finance", "--reason", "Billing help", env=cli_env)
    assert result.returncode != 0
    assert "No user with the e-mail address nobody@example.eu" in result.stderr


def test_grant_role_refuses_an_unknown_role(cli_env):
    result = run_portal("users", "grant-role", "x@example.eu", "emperor", "--reason", "Why not", env=cli_env)
    assert result.returncode == 2
    assert "emperor" in result.stderr


def test_invalid_settings_exit_non_zero_with_the_reason(cli_env):
    result = run_portal("db", "upgrade", env={**cli_env, "PORTAL_SMTP_PORT": "many"})
    assert result.returncode != 0
    assert "smtp_port" in result.stderr


def test_worker_runs_its_jobs_once_and_exits(cli_env):
    from tests.json_server import JsonServer
    from tests.metering.test_worker_scale import empty_hub

    assert run_portal("db", "upgrade", env=cli_env).returncode == 0
    with JsonServer(empty_hub) as hub:  # metering needs a hub that answers
        result = run_portal("worker", "--once", env={**cli_env, "PORTAL_HUB_URL": hub.url})
    assert result.returncode == 0, result.stderr
    for job in (
        "purge_stale_invitations",
        "start_and_expire_allocations",
        "notify_usage_thresholds",
        "check_balances",
        "remind_due_reviews",
        "meter_notebooks",
        "pull_slurm_usage",
        "sync_slurm_accounts",
    ):
        assert f"job {job} done: 0" in result.stderr, result.stderr


def test_serve_runs_the_portal_under_gunicorn(cli_env):
    import requests
    from portal_standin.devstack import free_port, wait_for_http

    assert run_portal("db", "upgrade", env=cli_env).returncode == 0
    port = free_port()
    process = subprocess.Popen(
        [PORTAL, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env={**os.environ, **cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process=process)
        response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert response.json()["status"] == "ok"
        assert "gunicorn" in response.headers.get("Server", "")
    finally:
        process.terminate()
        output = process.communicate(timeout=patience(10))[0].decode()
    assert "Booting worker" in output


def run_db(*args: str, env: dict[str, str], answer: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PORTAL, "db", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        input=answer,
        timeout=patience(120),
        check=False,
    )


def check_db_upgrade_and_downgrade(url: str, env: dict[str, str]) -> None:
    """`portal db upgrade/downgrade` against the database at URL: each says from which revision to which it went,
    refuses the wrong direction naming the right command, asks before undoing migrations, and leaves the
    schema exactly the models' after going down and up again."""
    from portal.migrations import current_revision, head_revision
    from tests.cli.test_migrations import schema_differences

    head = head_revision()
    env = {**env, "PORTAL_DATABASE_URL": url}
    steps = [
        (
            ("upgrade", "--revision", "0014"),
            0,
            "database upgraded from revision base (no schema) to 0014 (14 migrations)",
        ),
        (("upgrade",), 0, f"database upgraded from revision 0014 to {head} ("),
        (("upgrade",), 0, f"database already at revision {head}; nothing to do"),
        (("upgrade", "--revision", "0005"), 1, f"revision 0005 is older than the database's {head}"),
        (("downgrade", "--revision", head), 0, f"database already at revision {head}; nothing to do"),
        (("downgrade", "--revision", "nope"), 1, "Can't locate revision identified by 'nope'"),
    ]
    for args, status, says in steps:
        result = run_db(*args, env=env)
        assert result.returncode == status, (args, result.stdout, result.stderr)
        assert says in result.stdout + result.stderr, (args, result.stdout, result.stderr)
    assert "portal db downgrade --revision 0005" in run_db("upgrade", "--revision", "0005", env=env).stderr

    refused = run_db("downgrade", "--revision", "0014", env=env, answer="n\n")  # asks, and "no" changes nothing
    assert refused.returncode == 1 and "Aborted" in refused.stderr
    assert "0015  classroom:" in refused.stderr and f"{head}  " in refused.stderr  # the migrations it would undo
    assert current_revision(url) == head

    done = run_db("downgrade", "--revision", "0014", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert f"database downgraded from revision {head} to 0014 (" in done.stdout
    assert f"schema downgrade from {head} to 0014 by " in done.stderr  # logged for the operators
    assert current_revision(url) == "0014"
    up = run_db("downgrade", "--revision", head, env=env)
    assert up.returncode == 1 and f"revision {head} is not older than the database's 0014" in up.stderr

    assert run_db("upgrade", env=env).returncode == 0
    assert current_revision(url) == head and schema_differences(url) == []
    gone = run_db("downgrade", "--revision", "base", "--yes", env=env)
    assert f"database downgraded from revision {head} to base (no schema)" in gone.stdout, gone.stderr
    assert current_revision(url) is None


def test_db_upgrade_and_downgrade_say_what_they_did_on_sqlite(cli_env, tmp_path):
    check_db_upgrade_and_downgrade(f"sqlite:///{tmp_path / 'schema.db'}", cli_env)


@pytest.mark.postgres
def test_db_upgrade_and_downgrade_say_what_they_did_on_postgresql(cli_env):
    import uuid

    import sqlalchemy as sa

    base = os.environ.get("PORTAL_TEST_DATABASE_URL")
    if not base:
        pytest.skip("PORTAL_TEST_DATABASE_URL is not set; scripts/test sets it to the local PostgreSQL")
    name = f"portal_test_downgrade_{uuid.uuid4().hex[:8]}"  # its own database: the shared one stays at head
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        check_db_upgrade_and_downgrade(
            sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False), cli_env
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_serve_shares_the_workers_metrics_in_a_folder_of_its_own_when_none_is_set(cli_env, tmp_path):
    """Without PROMETHEUS_MULTIPROC_DIR, `portal serve` makes one (in TMPDIR), so /metrics adds up every gunicorn
    worker's requests; gunicorn removes it on exit. One set by the operator is left alone (the compose file's)."""
    import requests
    from portal_standin.devstack import free_port, wait_for_http

    assert run_portal("db", "upgrade", env=cli_env).returncode == 0
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env |= {**cli_env, "TMPDIR": str(scratch), "PORTAL_METRICS_TOKEN": "metrics-token"}
    port = free_port()
    process = subprocess.Popen(
        [PORTAL, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process=process)
        for _ in range(20):
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        folders = list(scratch.glob("portal-metrics-*"))
        assert len(folders) == 1 and list(folders[0].glob("*.db")), folders
        metrics = requests.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer metrics-token"}, timeout=10
        ).text
    finally:
        process.terminate()
        process.wait(timeout=patience(30))
    healthz = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("portal_http_request_duration_seconds_count{") and 'endpoint="health.healthz"' in line
    ]
    assert sum(healthz) >= 20, metrics[:2000]  # the multiprocess collector's sum over both workers
    assert not folders[0].exists()  # removed when gunicorn exited
