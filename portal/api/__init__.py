"""The JSON API under ``/api/v1``: bearer-token auth, RFC 9457 problems, and an OpenAPI document that
spectree generates from the routes' pydantic models (``/api/v1/openapi.json``).

The parts the packages build their routes with are in ``portal.api.core``; each package adds its routes to
``core.bp`` when its ``init_app`` imports its ``api.py``. This module only mounts the blueprint, after every
package has added its routes (``create_app``)."""

from __future__ import annotations

from flask import Flask, request
from flask_babel import get_locale, gettext

from portal.api.core import RequestInvalid, bp


def init_app(app: Flask) -> None:
    """Mount ``/api/v1``; call it after the packages' ``init_app`` (a blueprint takes no routes once mounted)."""
    from portal import web

    web.csrf.exempt(bp)  # token auth only: no cookie, so no CSRF
    app.register_blueprint(bp)

    @app.errorhandler(RequestInvalid)
    def _request_invalid(exc: RequestInvalid):
        return web.problem(
            422,
            gettext("Invalid request"),
            gettext("The request does not match the API's schema."),
            type_slug="invalid-request",
            errors=exc.errors,
        )

    @app.after_request
    def _www_authenticate(response):
        if request.path.startswith("/api/"):
            if response.status_code == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="portal"'
            # the texts of an answer (problem details, what the portal wrote on an allocation) follow Accept-Language
            response.vary.add("Accept-Language")
            response.content_language.add(str(get_locale() or "en"))
        return response
