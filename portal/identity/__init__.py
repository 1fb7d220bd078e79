"""Users, their linked logins (OIDC), factory roles and API tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask
    from sqlmodel import Session

    from portal.identity.models import ApiToken, User
    from portal.worker import AddJob

#: Its ``portal`` command groups: name -> (``module:group``, the group's summary); see ``portal.cli``.
CLI_GROUPS: dict[str, tuple[str, str]] = {
    "users": ("portal.identity.cli:users", "Users and factory roles."),
}


def init_app(app: Flask) -> None:
    """The login and account pages with the OIDC clients, ``/api/v1/me``, and the API's token check
    (``portal.authenticate_api_token``: ``api.core`` sits below ``identity`` and may not import it)."""
    from portal.identity import admin_api as _admin_api  # noqa: F401  (users' roles under /api/v1/admin)
    from portal.identity import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.identity import oidc, views

    oidc.init_app(app, app.extensions["portal.settings"])
    app.register_blueprint(views.bp)
    app.extensions["portal.authenticate_api_token"] = _authenticate_api_token


def _authenticate_api_token(db: Session, plain: str, *, scope: str) -> tuple[User, ApiToken]:
    """``api.core.token_required``'s check: ``scope`` is an ``ApiScope`` or its value."""
    from portal.identity.models import ApiScope
    from portal.identity.services import authenticate_api_token

    return authenticate_api_token(db, plain, scope=ApiScope(scope))


def register_jobs(add_job: AddJob) -> None:
    from portal.identity import personal_data

    add_job("enforce_retention_periods", every=86_400, run=personal_data.enforce_retention_periods)
