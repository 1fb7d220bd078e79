"""``portal check``: is every dependency of this installation there and answering? One line per check.

Each check says in plain words what it found or what is wrong, so that an operator who reads only the
failing line knows what to fix. The checks run in order; those that need the database are skipped, saying
so, when it cannot be reached.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import sqlalchemy as sa
import stripe
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from portal.config import Settings, load_settings

#: Seconds each network check waits for an answer.
TIMEOUT = 5.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.message}"


class CheckFailed(Exception):
    """What a check found wrong, in the words the operator reads."""


def _reason(exc: BaseException) -> str:
    """The plain cause of a network or database failure, without the stack of wrappers around it."""
    text = str(getattr(exc, "orig", None) or exc)
    known = {
        "connection refused": "connection refused",
        "name or service not known": "unknown host name",
        "nodename nor servname": "unknown host name",
        "temporary failure in name resolution": "unknown host name",
        "could not translate host name": "unknown host name",
        "timed out": "no answer (timed out)",
        "password authentication failed": "the password was refused",
        "no password supplied": "the server wants a password",
        "unable to open database file": "the database file cannot be opened",
    }
    lowered = text.lower()
    for pattern, words in known.items():
        if pattern in lowered:
            return words
    if "does not exist" in lowered and "database" in lowered:
        return "that database does not exist"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _get(url: str, **kwargs: Any) -> requests.Response:
    try:
        return requests.get(url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        raise CheckFailed(f"cannot reach {url}: {_reason(exc)}") from exc


# --- the checks ---------------------------------------------------------------------------------------------


def check_configuration(settings: Settings) -> str:
    missing = [p.name for p in settings.oidc_providers if not p.client_secret]
    if missing:
        names = ", ".join(f"PORTAL_OIDC_{n.upper().replace('-', '_')}_CLIENT_SECRET" for n in missing)
        raise CheckFailed(f"OIDC provider(s) {', '.join(missing)} have no client secret: set {names}")
    if settings.env == "production" and not settings.oidc_providers:
        raise CheckFailed("no OIDC provider is configured (PORTAL_OIDC_PROVIDERS), so nobody can log in")
    return f"{settings.env}, {settings.base_url}, {len(settings.oidc_providers)} OIDC provider(s)"


def _database_name(settings: Settings) -> str:
    return sa.engine.make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def check_database(settings: Settings, engine: sa.Engine) -> str:
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            version = ".".join(str(n) for n in (engine.dialect.server_version_info or ())[:2])
    except SQLAlchemyError as exc:
        raise CheckFailed(f"cannot connect to {_database_name(settings)}: {_reason(exc)}") from exc
    return f"{_database_name(settings)} answers ({engine.dialect.name} {version})".replace(" )", ")")


def check_migrations(engine: sa.Engine) -> str:
    from portal.migrations import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise CheckFailed(f"cannot read the schema's revision (table alembic_version): {_reason(exc)}") from exc
    if current == head:
        return f"the database is at {head}, as the code expects"
    if current is None:
        raise CheckFailed(f"the database has no schema yet; the code expects {head} — run `portal db upgrade`")
    known = {script.revision for script in scripts.walk_revisions()}
    if current not in known:
        raise CheckFailed(f"the database is at {current}, which this code does not know (a newer release ran here?)")
    raise CheckFailed(f"the database is at {current}, the code expects {head} — run `portal db upgrade`")


def check_oidc_provider(url: str) -> str:
    response = _get(url)
    if response.status_code != 200:
        raise CheckFailed(f"discovery document at {url} answered {response.status_code}")
    try:
        document = response.json()
    except ValueError as exc:
        raise CheckFailed(f"discovery document at {url} is not JSON") from exc
    lacking = [k for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri") if not document.get(k)]
    if lacking:
        raise CheckFailed(f"discovery document at {url} lacks {', '.join(lacking)}")
    keys = _get(document["jwks_uri"])
    if keys.status_code != 200:
        raise CheckFailed(f"its signing keys at {document['jwks_uri']} answered {keys.status_code}")
    return f"{document['issuer']} publishes its endpoints and keys"


def check_hub(settings: Settings) -> str:
    api = f"{settings.hub_url}/hub/api"
    version = _get(f"{api}/")
    if version.status_code != 200 or "version" not in _json(version):
        raise CheckFailed(
            f"{api}/ answered {version.status_code}, not JupyterHub's API — is PORTAL_HUB_URL the hub's address?"
        )
    users = _get(f"{api}/users", params={"limit": 1}, headers={"Authorization": f"token {settings.hub_api_token}"})
    if users.status_code in (401, 403):
        raise CheckFailed(
            f"JupyterHub {_json(version)['version']} at {settings.hub_url} refused the portal's token "
            f"({users.status_code}): PORTAL_HUB_API_TOKEN must have the same value "
            "in the portal's and the hub's environment"
        )
    if users.status_code != 200:
        raise CheckFailed(f"listing the hub's users answered {users.status_code}")
    return f"JupyterHub {_json(version)['version']} at {settings.hub_url} accepts the portal's token"


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def check_stripe(settings: Settings) -> str:
    from portal.market.stripe_gateway import StripeGateway

    where = settings.stripe_api_base or "api.stripe.com"
    try:
        StripeGateway(settings).client.v1.customers.list({"limit": 1})
    except stripe.AuthenticationError as exc:
        raise CheckFailed(f"{where} refused the API key (PORTAL_STRIPE_API_KEY)") from exc
    except stripe.APIConnectionError as exc:
        raise CheckFailed(f"cannot reach {where}: {_reason(exc.__cause__ or exc)}") from exc
    except stripe.StripeError as exc:
        raise CheckFailed(f"{where} answered {exc.http_status}: {exc.user_message or exc}") from exc
    return f"{where} accepts the API key"


def check_smtp(settings: Settings) -> str:
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password or "")
    except smtplib.SMTPAuthenticationError as exc:
        raise CheckFailed(f"{where} refused the login of {settings.smtp_username}") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise CheckFailed(f"cannot talk to the SMTP server at {where}: {_reason(exc)}") from exc
    return f"{where} answers"


# --- running them -----------------------------------------------------------------------------------------


def _run(name: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, check())
    except CheckFailed as exc:
        return CheckResult(name, False, str(exc))


def run_checks(settings: Settings | None = None) -> Iterator[CheckResult]:
    """Every check, in order; settings are read from the environment when not given."""
    if settings is None:
        try:
            settings = load_settings()
        except (ValidationError, ValueError) as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in _errors(exc))
            yield CheckResult("configuration", False, f"the settings are invalid: {detail}")
            return
    yield _run("configuration", lambda: check_configuration(settings))
    engine = sa.create_engine(settings.resolved_database_url, connect_args=_connect_args(settings))
    try:
        database = _run("database", lambda: check_database(settings, engine))
        yield database
        if database.ok:
            yield _run("migrations", lambda: check_migrations(engine))
        else:
            yield CheckResult("migrations", False, "not checked: the database cannot be reached")
    finally:
        engine.dispose()
    for provider in settings.oidc_providers:
        yield _run(f"OIDC provider '{provider.name}'", lambda p=provider: check_oidc_provider(p.discovery_url))
    yield _run("hub", lambda: check_hub(settings))
    yield _run("Stripe", lambda: check_stripe(settings))
    if settings.mail_backend == "smtp":
        yield _run("SMTP", lambda: check_smtp(settings))


def _errors(exc: Exception) -> list[dict[str, Any]]:
    if isinstance(exc, ValidationError):
        return list(exc.errors())
    return [{"loc": (), "msg": str(exc)}]


def _connect_args(settings: Settings) -> dict[str, Any]:
    url = sa.engine.make_url(settings.resolved_database_url)
    return {"connect_timeout": int(TIMEOUT)} if url.get_backend_name() == "postgresql" else {}
