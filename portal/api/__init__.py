"""The JSON API under ``/api/v1``: bearer-token auth, RFC 9457 problems, and an OpenAPI document that
spectree generates from the routes' pydantic models (``/api/v1/openapi.json``)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, g, jsonify, request
from pydantic import BaseModel
from spectree import SecurityScheme, SecuritySchemeData, SpecTree

from portal.db import get_db
from portal.errors import AuthenticationRequired, InvalidInput
from portal.identity.models import ApiScope, ApiToken, User
from portal.identity.services import authenticate_api_token

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: dict[str, str] | list[dict[str, Any]] | None = None


class RequestInvalid(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("request validation failed")
        self.errors = errors


def _before(req, resp, err, instance, model_adapter) -> None:  # type: ignore[no-untyped-def]
    if err is not None:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in model_adapter.validation_errors(err)
        ]
        raise RequestInvalid(errors)


spec = SpecTree(
    "flask",
    title="Baltic AI Factory Portal API",
    version="1",
    description="Projects, organisations and (in later versions) allocations of the Baltic AI Factory. "
    "Authenticate with a personal API token: `Authorization: Bearer <token>`.",
    path="apidoc",
    mode="strict",  # only routes declared with @spec.validate, i.e. the JSON API
    page_templates={},
    before=_before,
    validation_error_status=422,
    validation_error_model=Problem,
    naming_strategy=lambda model: model.__name__,
    security_schemes=[
        SecurityScheme(
            name="bearerAuth",
            data=SecuritySchemeData(type="http", scheme="bearer", description="A personal API token"),
        )
    ],
    security={"bearerAuth": []},
)


def token_required(scope: ApiScope) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Authenticate the request's bearer token and require ``scope``; sets ``g.api_user``."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            kind, _, token = header.partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise AuthenticationRequired("Send a personal API token: 'Authorization: Bearer <token>'.")
            g.api_user, g.api_token = authenticate_api_token(get_db(), token.strip(), scope=scope)
            if request.method in ("POST", "PUT", "PATCH") and not request.is_json:
                raise InvalidInput("Send the request body as application/json.")
            return view(*args, **kwargs)

        return wrapper

    return decorator


def api_user() -> User:
    return g.api_user  # type: ignore[no-any-return]


def api_token() -> ApiToken:
    return g.api_token  # type: ignore[no-any-return]


PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}
#: Answers every operation may give, whatever it declares: too many failed token authentications from the
#: caller's address, and the database unavailable.
COMMON_PROBLEMS = {
    "429": "Too Many Requests: too many failed token authentications from this address",
    "503": "Service Unavailable: the database cannot be reached; nothing was changed",
}


def with_problem_media_type(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as the API answers: every error (4xx, 5xx) is ``application/problem+json``, and
    every operation may answer 429 and 503 with ``Retry-After``."""
    document = copy.deepcopy(document)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                content = response.get("content") or {}
                if status[0] in "45" and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
            for status, description in COMMON_PROBLEMS.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "headers": RETRY_AFTER,
                        "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
                    },
                )
    return document


@bp.get("/openapi.json")
def openapi_document():  # type: ignore[no-untyped-def]
    return jsonify(with_problem_media_type(spec.spec))


def init_app(app: Flask) -> None:
    from portal import web
    from portal.audit import api as _audit_api  # noqa: F401
    from portal.compute import api as _compute_api  # noqa: F401
    from portal.identity import api as _identity_api  # noqa: F401  (routes register on bp)
    from portal.metering import api as _metering_api  # noqa: F401
    from portal.projects import api as _projects_api  # noqa: F401
    from portal.reports import api as _reports_api  # noqa: F401

    web.csrf.exempt(bp)  # token auth only: no cookie, so no CSRF
    app.register_blueprint(bp)

    @app.errorhandler(RequestInvalid)
    def _request_invalid(exc: RequestInvalid):  # type: ignore[no-untyped-def]
        return web.problem(
            422,
            "Invalid request",
            "The request does not match the API's schema.",
            type_slug="invalid-request",
            errors=exc.errors,
        )

    @app.after_request
    def _www_authenticate(response):  # type: ignore[no-untyped-def]
        if response.status_code == 401 and request.path.startswith("/api/"):
            response.headers["WWW-Authenticate"] = 'Bearer realm="portal"'
        return response
