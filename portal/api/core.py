"""What every package's ``api.py`` builds its routes with: the ``/api/v1`` blueprint, the OpenAPI document's
``spec``, bearer-token auth and the RFC 9457 ``Problem`` model.

It imports no domain package, so every package can import it (import-linter's ``api-core-below-domains``
contract): the token check itself belongs to ``identity``, which installs it at
``app.extensions["portal.authenticate_api_token"]`` (``portal.identity.init_app``), and the routes register
themselves when their package's ``init_app`` imports its ``api.py``."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from flask import Blueprint, current_app, g, jsonify, request
from flask_babel import gettext, ngettext
from flask_babel import lazy_gettext as _l
from pydantic import BaseModel, ValidationError
from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree
from spectree.plugins.flask_plugin import FlaskPlugin

from portal.db import get_db
from portal.errors import AuthenticationRequired, InvalidInput

if TYPE_CHECKING:  # types only: identity imports this module, never the other way round
    from sqlmodel import Session

    from portal.identity.models import ApiToken, User

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


def N_(text: str) -> str:
    """Marks a message for the catalogue (``pybabel extract``); translated when it is shown."""
    return text


#: What the API says, in the caller's language, for the schema refusals it meets most (pydantic writes its own
#: ``msg`` in English): keyed by pydantic's error ``type``, with the limits from its ``ctx``. Other types keep
#: pydantic's text; ``type`` is in every entry for programs to read.
SCHEMA_MESSAGES: dict[str, str] = {
    "missing": N_("This field is required."),
    "string_type": N_("Give text here."),
    "string_pattern_mismatch": N_("Not in the form this field takes."),
    "int_parsing": N_("Give a whole number."),
    "int_type": N_("Give a whole number."),
    "int_from_float": N_("Give a whole number."),
    "greater_than_equal": N_("At least %(ge)s."),
    "less_than_equal": N_("At most %(le)s."),
    "greater_than": N_("More than %(gt)s."),
    "less_than": N_("Less than %(lt)s."),
    "bool_parsing": N_("Give true or false."),
    "date_parsing": N_("Give a date as YYYY-MM-DD."),
    "date_from_datetime_parsing": N_("Give a date as YYYY-MM-DD."),
    "datetime_parsing": N_("Give a date and time with its time zone, e.g. 2027-01-31T12:00:00Z."),
    "extra_forbidden": N_("This field is not accepted here."),
    "enum": N_("Give one of: %(expected)s."),
    "literal_error": N_("Give one of: %(expected)s."),
    "json_invalid": N_("The body is not valid JSON."),
}


def _schema_message(error: dict[str, Any]) -> str:
    kind, context = error.get("type", ""), error.get("ctx") or {}
    if kind == "string_too_short" and isinstance(context.get("min_length"), int):
        return ngettext("At least %(num)s character.", "At least %(num)s characters.", context["min_length"])
    if kind == "string_too_long" and isinstance(context.get("max_length"), int):
        return ngettext("At most %(num)s character.", "At most %(num)s characters.", context["max_length"])
    text = SCHEMA_MESSAGES.get(kind)
    if text is None:
        return str(error.get("msg", ""))
    try:
        return gettext(text, **{name: str(value) for name, value in context.items()})
    except (KeyError, ValueError):  # a limit the message names is missing from this error's ctx
        return str(error.get("msg", ""))


def _before(req, resp, err, instance, model_adapter) -> None:
    if err is not None:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": _schema_message(e), "type": e.get("type", "")}
            for e in (
                err.errors(include_url=False)
                if isinstance(err, ValidationError)
                else model_adapter.validation_errors(err)
            )
        ]
        raise RequestInvalid(errors)


class _OperationsNamedByView(FlaskPlugin):
    """spectree's Flask backend, naming an operation that declares no ``operation_id`` after its view function
    (``create_project``) instead of its method and path (``post__api_v1_organisations_{organisation_id}_projects``):
    the names a generated client's functions get."""

    def get_func_operation_id(self, func: Callable, path: str, method: str) -> str:
        return getattr(func, "operation_id", None) or func.__name__


spec = SpecTree(
    "flask",
    backend=_OperationsNamedByView,
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


class TokenAuthenticator(Protocol):
    """``app.extensions["portal.authenticate_api_token"]``: the user behind a bearer token that has ``scope``,
    and the token; raises ``AuthenticationRequired`` or ``NotAuthorised`` (``identity.services``)."""

    def __call__(self, db: Session, plain: str, *, scope: str) -> tuple[User, ApiToken]: ...


def token_required(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Authenticate the request's bearer token and require ``scope`` (an ``identity.models.ApiScope``, or its
    value where a package may not import ``identity``); sets ``g.api_user`` and ``g.api_token``."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            kind, _, token = header.partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise AuthenticationRequired(_l("Send a personal API token: 'Authorization: Bearer <token>'."))
            authenticate: TokenAuthenticator = current_app.extensions["portal.authenticate_api_token"]
            g.api_user, g.api_token = authenticate(get_db(), token.strip(), scope=scope)
            if request.method in ("POST", "PUT", "PATCH") and not request.is_json:
                raise InvalidInput(_l("Send the request body as application/json."))
            return view(*args, **kwargs)

        return wrapper

    return decorator


def api_user() -> User:
    return g.api_user


def api_token() -> ApiToken:
    return g.api_token


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


SCHEMA_REF = "#/components/schemas/"


def _renamed_refs(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMA_REF) and ref[len(SCHEMA_REF) :] in names:
            return {**node, "$ref": SCHEMA_REF + names[ref[len(SCHEMA_REF) :]]}
        return {key: _renamed_refs(value, names) for key, value in node.items()}
    if isinstance(node, list):
        return [_renamed_refs(value, names) for value in node]
    return node


def with_one_schema_per_model(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with one schema per model under a name of its own, as client generators need.

    spectree files a model nested in a route's model under ``Parent.Model``, once per parent, each titled
    ``Model``; a generator (openapi-python-client) makes one class per title, and refuses the second
    ``ResourceOut``. Here the copies of one model become one schema named ``Model``; where two different models
    share a class name, the one that is no route's own model is named after its first parent (``ParentModel``).
    Every schema is titled with its name."""
    document = copy.deepcopy(document)
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    names = {name: name for name in schemas}
    for _ in range(len(schemas) + 1):  # until stable: a model's identity depends on what its refs are called
        variants: dict[str, dict[str, list[str]]] = {}
        for name, schema in schemas.items():
            content = json.dumps({**_renamed_refs(schema, names), "title": None}, sort_keys=True)
            variants.setdefault(name.rsplit(".", 1)[-1], {}).setdefault(content, []).append(name)
        renamed: dict[str, str] = {}
        for model, copies in variants.items():
            for members in copies.values():
                target = model if len(copies) == 1 or model in members else min(members).replace(".", "")
                renamed |= dict.fromkeys(members, target)
        if renamed == names:
            break
        names = renamed
    merged: dict[str, Any] = {}
    for name, schema in schemas.items():
        merged.setdefault(names[name], {**_renamed_refs(schema, names), "title": names[name]})
    if schemas:
        document["components"]["schemas"] = dict(sorted(merged.items()))
    document["paths"] = _renamed_refs(document.get("paths", {}), names)
    return document


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(with_problem_media_type(with_one_schema_per_model(spec.spec)))


def responses(*problems: int, **answers: Any) -> Response:
    """A route's documented answers: its success models (``HTTP_200=Model``) and the problem+json statuses it
    can give (``401, 403, 404``), so each route lists its statuses in one line instead of one per status."""
    return Response(**answers, **{f"HTTP_{status}": Problem for status in problems})
