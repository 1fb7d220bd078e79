"""Baltic AI Factory portal: ``create_app()`` builds the Flask application; nothing happens at import."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask

from portal.config import Settings, load_settings


def _secret_key(settings: Settings) -> str:
    """The configured key, or (outside production) one generated once into the instance folder."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.instance_path) / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _install_enforcement_hooks(settings: Settings) -> None:
    """What happens the moment an allocation is exhausted: its Slurm accounts are held and its notebook
    servers stopped at once."""
    from functools import partial

    from portal.compute.launch import stop_notebooks_of_exhausted
    from portal.ledger.services import register_enforcement_hook
    from portal.metering.slurm import hold_allocation_now

    register_enforcement_hook("slurm_hold", partial(hold_allocation_now, settings) if settings.slurm_clusters else None)
    register_enforcement_hook(
        "notebook_stop", partial(stop_notebooks_of_exhausted, settings) if settings.hub_api_token else None
    )


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    settings = settings or load_settings(**overrides)
    Path(settings.instance_path).mkdir(parents=True, exist_ok=True)

    app = Flask(
        __name__,
        static_folder=str(Path(__file__).resolve().parent.parent / "static"),
        instance_path=str(Path(settings.instance_path).resolve()),
    )
    app.config.update(
        SECRET_KEY=_secret_key(settings),
        SESSION_COOKIE_NAME="portal_session",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_lifetime_hours),
        SESSION_REFRESH_EACH_REQUEST=False,  # the cookie's signature keeps the time of login; it is not renewed
        WTF_CSRF_TIME_LIMIT=8 * 3600,
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        TESTING=settings.env == "test",
    )
    app.extensions["portal.settings"] = settings
    logging.getLogger("portal").setLevel(settings.log_level)

    from portal import db, web

    engine = db.make_engine(
        settings.resolved_database_url,
        connect_timeout=settings.database_connect_timeout_seconds,
        statement_timeout=settings.database_statement_timeout_seconds,
    )
    db.init_app(app, engine)
    web.init_app(app, settings)
    from portal import observability

    observability.init_app(app, settings)

    from portal.identity import oidc

    oidc.init_app(app, settings)

    from portal.api import init_app as init_api
    from portal.audit.views import bp as audit_bp
    from portal.grants.views import bp as grants_bp
    from portal.health import bp as health_bp
    from portal.identity.views import bp as identity_bp
    from portal.ledger.views import bp as ledger_bp
    from portal.ledger.views import project_allocations
    from portal.notifications.views import bp as notifications_bp
    from portal.projects.views import bp as projects_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(identity_bp)
    app.register_blueprint(projects_bp)
    app.register_blueprint(ledger_bp)
    app.extensions["portal.project_allocations"] = project_allocations  # the project page's ledger section
    app.register_blueprint(grants_bp)
    app.register_blueprint(notifications_bp)
    app.register_blueprint(audit_bp)
    from portal.compute.views import bp as notebooks_bp

    app.register_blueprint(notebooks_bp)
    from portal.classroom.views import bp as classroom_bp
    from portal.compute.launch import start_notebook

    app.register_blueprint(classroom_bp)
    app.extensions["portal.start_notebook"] = start_notebook  # the course pages' launcher (classroom.views)
    init_api(app)
    from portal.compute.oauth import init_app as init_hub_oauth

    init_hub_oauth(app)
    from portal.market.views import init_app as init_market

    init_market(app)
    from portal.reports.views import bp as reports_bp

    app.register_blueprint(reports_bp)
    from portal import ratelimit

    ratelimit.init_app(app, settings)
    _install_enforcement_hooks(settings)
    return app
