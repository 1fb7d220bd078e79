"""Rate limits (Flask-Limiter) on the requests an attacker would repeat: login starts, failed API token
authentication, the hub's OAuth client authentication, invitations and course join codes.

All limits are declared here, by endpoint, after every blueprint is registered, so the packages' views carry
no rate-limit code. The counters live where ``rate_limit_storage_url`` says: ``memory://`` for one process (the
demo, the tests), Redis when several gunicorn workers must share them. A request over its limit gets 429 with
``Retry-After``: problem+json on the API and the OAuth token endpoint, a page elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, current_app, render_template, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from flask_login import current_user

from portal.config import Settings


def user_or_address() -> str:
    """The logged-in user (so that colleagues behind one NAT do not share a counter), else the address."""
    return f"user:{current_user.id}" if current_user.is_authenticated else f"address:{get_remote_address()}"


def address() -> str:
    return f"address:{get_remote_address()}"


def _refused(status: int) -> Callable[[Response], bool]:
    return lambda response: response.status_code == status


@dataclass(frozen=True)
class LimitedRoute:
    """One endpoint under one of the ``rate_limits`` kinds."""

    kind: str
    endpoint: str
    key: Callable[[], str]
    methods: tuple[str, ...] | None = None
    #: Count only the responses this says (failed authentication); None counts every request.
    counts: Callable[[Response], bool] | None = None


#: The endpoints limited one by one. Failed API token authentication is limited on the whole API blueprint.
LIMITED_ROUTES = (
    LimitedRoute("login", "identity.start_login", address),
    LimitedRoute("oauth_client_auth_failures", "oauth.token", address, counts=_refused(401)),
    LimitedRoute("invitations", "projects.invite", user_or_address, methods=("POST",)),
    LimitedRoute("invitations", "api.invite", address, methods=("POST",)),
    LimitedRoute("invitations", "projects.invitation", address),
    LimitedRoute("invitations", "projects.accept_invitation", user_or_address),
    LimitedRoute("join_codes", "classroom.join", user_or_address, methods=("POST",)),
)


def init_app(app: Flask, settings: Settings) -> Limiter:
    """One limiter per application (its own counters); call after every blueprint is registered."""
    limiter = Limiter(
        key_func=address,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        strategy="moving-window",
        key_prefix="portal",
        headers_enabled=False,
        swallow_errors=True,  # Redis down: requests go on unlimited (and it is logged), the portal stays up
    )
    limits = settings.rate_limits
    for route in LIMITED_ROUTES:
        view = app.view_functions.get(route.endpoint)
        if view is None:
            raise RuntimeError(f"rate limit for {route.endpoint}, which is no endpoint")
        app.view_functions[route.endpoint] = limiter.limit(
            limits[route.kind],
            key_func=route.key,
            methods=list(route.methods) if route.methods else None,
            deduct_when=route.counts,
            override_defaults=False,  # the API blueprint's limit on failed authentication still applies
        )(view)
    # One counter for the whole API: failures on any route hold every route.
    limiter.shared_limit(
        limits["api_auth_failures"], scope="api-auth-failures", key_func=address, deduct_when=_refused(401)
    )(app.blueprints["api"])
    app.extensions["portal.limiter"] = limiter
    app.register_error_handler(RateLimitExceeded, _too_many_requests)
    return limiter


def _too_many_requests(exc: RateLimitExceeded):
    from portal.web import problem

    limit = current_app.extensions["portal.limiter"].current_limit
    window = exc.limit.limit.get_expiry()
    retry_after = min(window, max(1, math.ceil(limit.reset_at - time.time()))) if limit is not None else window
    detail = f"Too many requests of this kind ({exc.limit.limit}). Try again in {retry_after} seconds."
    if request.path.startswith(("/api/", "/oauth/")):
        response = problem(429, "Too many requests", detail, type_slug="too-many-requests")
    else:
        page = render_template("error.html", title="Too many requests", detail=detail, status=429)
        response = Response(page, 429)
    response.headers["Retry-After"] = str(retry_after)
    return response
