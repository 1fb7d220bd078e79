"""What every page shares: login sessions, CSRF, security headers, translations and error pages."""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from flask import Flask, Response, current_app, g, render_template, request, session, stream_with_context
from flask_babel import gettext
from flask_login import LoginManager, current_user
from flask_talisman import Talisman
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from portal.authz import factory_roles
from portal.config import AssuranceLevel, Settings
from portal.db import LARGEST_ID, get_db
from portal.errors import DomainError
from portal.formatting import csv_safe
from portal.identity.models import Login, User, WebSession

csrf = CSRFProtect()
login_manager = LoginManager()

#: A Content Security Policy that allows only the portal itself; htmx's inline indicator styles are off.
CSP = {
    "default-src": "'self'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}

#: Keys of a logged-in session: Flask-Login's, the server-side session's key and the login behind it.
SESSION_KEYS = ("_user_id", "_fresh", "_id", "web_session", "login_id")
#: Seconds a client is asked to wait before trying again while the database is unavailable.
DATABASE_RETRY_AFTER = 30
#: Responses that are private by nature, whoever asks: never stored by a browser or a proxy.
PRIVATE_MIMETYPES = frozenset({"application/pdf", "text/csv"})

log = logging.getLogger("portal.web")


class IdConverter(IntegerConverter):
    """``<int:...>`` in the portal's URLs is an id: one beyond ``LARGEST_ID`` answers 404 like any missing one."""

    def __init__(self, map: Any, *args: Any, max: int = LARGEST_ID, **kwargs: Any) -> None:
        super().__init__(map, *args, max=max, **kwargs)


def database_id(value: str) -> int:
    """An id read from a query string or form (``request.args.get(name, type=database_id)``): a value that can
    name no row raises ``ValueError``, which ``get`` turns into its default."""
    number = int(value)
    if not 1 <= number <= LARGEST_ID:
        raise ValueError(f"{value!r} is no id")
    return number


def init_app(app: Flask, settings: Settings) -> None:
    app.url_map.converters["int"] = IdConverter
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_prefix=n)
    Talisman(
        app,
        force_https=False,  # TLS ends at the reverse proxy; HSTS is still sent on every HTTPS request
        strict_transport_security=True,
        strict_transport_security_max_age=63072000,
        content_security_policy=content_security_policy(settings),
        frame_options="DENY",
        referrer_policy="strict-origin-when-cross-origin",
        session_cookie_secure=settings.secure_cookies,
        session_cookie_http_only=True,
    )
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "identity.login"
    login_manager.login_message_category = "info"
    login_manager.user_loader(_load_user)

    app.context_processor(_template_globals)
    app.register_error_handler(DomainError, _domain_error)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    for error in (OperationalError, PoolTimeout):
        app.register_error_handler(error, _database_unavailable)
    app.after_request(_no_store_for_private_responses)


def _origin(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def content_security_policy(settings: Settings) -> dict[str, str]:
    """``CSP`` with the places the portal's own forms lead to on purpose: a form may post only to the portal, but
    some of its answers redirect (which browsers also hold to ``form-action``) to a login provider (linking an
    identity), to Stripe's payment page (buying hours) and to the hub (starting a notebook)."""
    targets = [
        _origin(url) for provider in settings.oidc_providers for url in (provider.discovery_url, provider.authorize_url)
    ]
    targets += [_origin(settings.stripe_api_base) or "https://checkout.stripe.com"]
    targets += [_origin(settings.hub_oauth_redirect_uri)]
    extra = sorted({t for t in targets if t})
    return {**CSP, "form-action": " ".join(["'self'", *extra])}


def _load_user(user_id: str) -> User | None:
    """The user of a session that is still live on the server (not logged out, ended or run out); a cookie
    whose session has ended is forgotten, whatever its signature says."""
    from portal.identity.services import live_web_session

    key = session.get("web_session")
    live = live_web_session(get_db(), key, int(user_id)) if isinstance(key, str) and user_id.isdigit() else None
    if live is None or not live[1].is_active:
        for name in SESSION_KEYS:
            session.pop(name, None)
        return None
    g.web_session, user = live
    return user


def current_web_session() -> WebSession | None:
    """The server-side session behind the logged-in user of this request (None when nobody is logged in)."""
    return g.get("web_session") if current_user.is_authenticated else None


def settings() -> Settings:
    return current_app.extensions["portal.settings"]


def actor() -> User:
    """The logged-in user as a model object, for passing to services."""
    return current_user._get_current_object()


def current_login() -> Login | None:
    """The login behind this session: its provider and level of assurance."""
    if "current_login" not in g:
        login_id = session.get("login_id")
        g.current_login = get_db().get(Login, login_id) if login_id else None
    return g.current_login


def current_level() -> AssuranceLevel | None:
    login = current_login()
    return AssuranceLevel(login.level) if login else None


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site paths are followed after login, never another host."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(c) < 32 for c in target):
        return default
    return target


def _template_globals() -> dict[str, Any]:
    roles: set[str] = set()
    if current_user.is_authenticated:
        roles = {str(r) for r in factory_roles(get_db(), actor())}
    return {"factory_roles": roles, "current_login": current_login, "portal_settings": settings()}


def wants_problem_json() -> bool:
    return request.path.startswith("/api/")


def _translated(message: str | None) -> str | None:
    """A message in the request's language where the catalogue has it (``portal.i18n``), else as it is."""
    return gettext(message) if message else message


def problem(status: int, title: str, detail: str, *, type_slug: str = "about:blank", **extra: Any):
    """An RFC 9457 problem details response, its title and detail in the language of ``Accept-Language``."""
    body = {
        "type": type_slug if type_slug == "about:blank" else f"https://factory.example.eu/problems/{type_slug}",
        "title": _translated(title),
        "status": status,
        "detail": _translated(detail),
        **extra,
    }
    response = current_app.json.response(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def _domain_error(exc: DomainError):
    get_db().rollback()
    if wants_problem_json():
        extra = {"errors": exc.errors} if exc.errors else {}
        return problem(exc.status, exc.title, exc.detail, type_slug=exc.type_slug, **extra)
    title, detail = _translated(exc.title), _translated(exc.detail)
    return render_template("error.html", title=title, detail=detail, status=exc.status), exc.status


def _csrf_error(exc: CSRFError):
    detail = gettext("The form expired or did not come from this portal. Go back, reload the page and try again.")
    if wants_problem_json():
        return problem(400, gettext("CSRF check failed"), detail)
    return render_template("error.html", title=gettext("Form expired"), detail=detail, status=400), 400


def _http_error(exc: HTTPException):
    status = exc.code or 500
    if wants_problem_json():
        response = problem(status, exc.name, exc.description or exc.name)
    else:
        title, detail = _translated(exc.name), _translated(exc.description)
        response = Response(render_template("error.html", title=title, detail=detail, status=status), status)
    for name, value in exc.get_headers():
        if name.lower() in ("allow", "retry-after", "www-authenticate"):
            response.headers[name] = value  # 405's Allow, 429's and 503's Retry-After
    return response


def _database_unavailable(exc: Exception):
    """The database is down, unreachable or too slow: 503 with Retry-After and a plain explanation, one log
    line (no traceback: the cause is outside the portal, and one per request would drown the log)."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    log.warning("database unavailable for %s %s: %s", request.method, request.path, cause[0][:300] if cause else "")
    g._login_user = login_manager.anonymous_user()  # neither the page nor its language may ask the database
    title = gettext("Service temporarily unavailable")
    detail = gettext("The portal cannot reach its database at the moment. Nothing was changed; try again in a minute.")
    if wants_problem_json():
        response = problem(503, title, detail, type_slug="database-unavailable")
    else:
        response = Response(render_template("unavailable.html", title=title, detail=detail), 503)
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


def _no_store_for_private_responses(response: Response) -> Response:
    """Pages of a logged-in user, API answers to a token, PDFs and CSVs are never kept in a cache."""
    private = (
        response.mimetype in PRIVATE_MIMETYPES
        or "Authorization" in request.headers
        or (session.get("_user_id") is not None and request.endpoint != "static")
    )
    if private:
        response.headers["Cache-Control"] = "no-store"
    return response


#: A cell that is a plain number (``-75.00``, ``12``): a spreadsheet reads it as a number, never as a formula.
_PLAIN_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
#: Rows written to the buffer before it is sent on.
CSV_ROWS_PER_CHUNK = 500
_SAFE_FILENAME = re.compile(r"[A-Za-z0-9._-]+")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and not _PLAIN_NUMBER.fullmatch(value):
        return csv_safe(value)
    return value


def content_disposition(filename: str) -> str:
    """``attachment`` with the file's name; a name beyond plain ASCII also goes as RFC 6266 ``filename*``."""
    if _SAFE_FILENAME.fullmatch(filename):
        return f'attachment; filename="{filename}"'
    fallback = "".join(c if _SAFE_FILENAME.fullmatch(c) else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def csv_response(filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    """A CSV download, the one way every export is sent: UTF-8, CRLF line ends, a header row, streamed in
    chunks (``rows`` may be a generator that reads in batches, with the request still open). Numbers stay
    numbers (``-75.00``, ``None`` an empty cell); text a spreadsheet would run as a formula gets a leading
    apostrophe."""

    def chunks() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(header)
        for n, row in enumerate(rows, start=1):
            writer.writerow([_csv_cell(value) for value in row])
            if n % CSV_ROWS_PER_CHUNK == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(
        stream_with_context(chunks()),
        mimetype="text/csv",
        headers={"Content-Disposition": content_disposition(filename)},
    )
