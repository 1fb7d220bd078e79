"""Settings (environment and TOML), their documentation, and the ``portal`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from portal.config import AssuranceLevel, OIDCProvider, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
PORTAL = str(Path(sys.executable).parent / "portal")


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`PORTAL_{name.upper()}`" in readme, f"PORTAL_{name.upper()} is not in README.md"
    for name in OIDCProvider.model_fields:
        assert f"`{name}`" in readme, f"provider key {name} is not in README.md"


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
        [PORTAL, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=60, check=False
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
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_worker_scale import EmptyHub

    assert run_portal("db", "upgrade", env=cli_env).returncode == 0
    hub = ThreadingHTTPServer(("127.0.0.1", 0), EmptyHub)  # metering needs a hub that answers
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        result = run_portal(
            "worker", "--once", env={**cli_env, "PORTAL_HUB_URL": f"http://127.0.0.1:{hub.server_port}"}
        )
    finally:
        hub.shutdown()
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

    from portal.devstack import free_port, wait_for_http

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
        output = process.communicate(timeout=10)[0].decode()
    assert "Booting worker" in output
