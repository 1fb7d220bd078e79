"""Baltic AI Factory portal: ``create_app()`` builds the Flask application; nothing happens at import."""

from __future__ import annotations

import importlib
import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

from portal.config import Settings, load_settings

if TYPE_CHECKING:
    from portal.ledger.services import EnforcementHooks

#: The domain packages, each plugged in by its ``init_app(app)`` (blueprints, API routes, ``app.extensions``
#: hooks) and, beside it, ``CLI_GROUPS`` (``portal.cli``) and ``register_jobs(add_job)`` (``portal.worker``):
#: Warehouse's ``includeme``. Names, not modules, so that ``import portal`` stays light. In this order the
#: packages add their API routes (the order of the tags in the OpenAPI document) and their jobs (``JOBS``).
DOMAINS = (
    "portal.audit",
    "portal.classroom",
    "portal.compute",
    "portal.grants",
    "portal.identity",
    "portal.ledger",
    "portal.market",
    "portal.metering",
    "portal.notifications",
    "portal.projects",
    "portal.reports",
)


def _secret_key(settings: Settings) -> str:
    """The configured key, or (outside production) one generated once into the instance folder."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.instance_path) / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def enforcement_hooks(settings: Settings) -> EnforcementHooks:
    """What happens the moment an allocation is exhausted: its Slurm accounts are held and its notebook
    servers stopped at once. A process that uses the ledger without ``create_app`` (a script, a worker of its
    own) puts them in force with ``ledger.install_enforcement_hooks(enforcement_hooks(settings))``."""
    from functools import partial

    from portal.compute.launch import stop_notebooks_of_exhausted
    from portal.ledger.services import EnforcementHooks
    from portal.metering.slurm import hold_allocation_now

    hooks = EnforcementHooks()
    hooks.register("slurm_hold", partial(hold_allocation_now, settings) if settings.slurm_clusters else None)
    hooks.register("notebook_stop", partial(stop_notebooks_of_exhausted, settings) if settings.hub_api_token else None)
    return hooks


def _install_enforcement_hooks(app: Flask, settings: Settings) -> None:
    """The app's hooks, in its ``extensions``; a copy for this process's code that runs outside an app context
    (the worker thread of ``portal demo``), as the last app built in a process always had."""
    from portal.ledger.services import EnforcementHooks, install_enforcement_hooks

    hooks = enforcement_hooks(settings)
    install_enforcement_hooks(hooks, app)
    install_enforcement_hooks(EnforcementHooks(hooks))


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

    from portal import db, i18n, web

    engine = db.make_engine(
        settings.resolved_database_url,
        connect_timeout=settings.database_connect_timeout_seconds,
        statement_timeout=settings.database_statement_timeout_seconds,
    )
    db.init_app(app, engine)
    web.init_app(app, settings)
    i18n.init_app(app)  # the request's language, the switch, the locale-aware filters
    from portal import observability

    observability.init_app(app, settings)

    from portal.health import bp as health_bp

    app.register_blueprint(health_bp)
    for package in DOMAINS:
        importlib.import_module(package).init_app(app)
    from portal import api

    api.init_app(app)  # after the packages: they add their routes to its blueprint
    from portal import ratelimit

    ratelimit.init_app(app, settings)
    _install_enforcement_hooks(app, settings)
    return app
