"""The Authlib client for the configured OIDC providers: code flow with state, nonce and PKCE (S256)."""

from __future__ import annotations

from typing import Any

import requests
from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask, current_app, session
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError
from werkzeug.wrappers import Response

from portal.config import OIDCProvider, Settings
from portal.errors import LoginRefused, NotFound

#: Clock skew tolerated between the portal and a provider when checking an ID token's expiry.
LEEWAY_SECONDS = 60

TOKEN_ERRORS = (OAuthError, JoseError)


def init_app(app: Flask, settings: Settings) -> None:
    oauth = OAuth(app)
    for provider in settings.oidc_providers:
        kwargs: dict[str, Any] = {
            "name": provider.name,
            "client_id": provider.client_id,
            "client_secret": provider.client_secret,
            "server_metadata_url": provider.discovery_url,
            "client_kwargs": {"scope": provider.scopes, "code_challenge_method": "S256", "timeout": 10},
        }
        if provider.authorize_url:
            kwargs["authorize_url"] = provider.authorize_url
        if provider.token_url:
            kwargs["access_token_url"] = provider.token_url
        if provider.jwks_uri:
            kwargs["jwks_uri"] = provider.jwks_uri
        oauth.register(**kwargs)
    app.extensions["portal.oauth"] = oauth


def _client(provider: OIDCProvider):  # type: ignore[no-untyped-def]
    client = current_app.extensions["portal.oauth"].create_client(provider.name)
    if client is None:
        raise NotFound("No such login provider.")
    return client


#: Logins started but not finished (other tabs, abandoned attempts) whose state the session keeps: each costs
#: about 540 bytes of the cookie, which browsers drop beyond 4 KB, logging the user out.
PENDING_LOGINS_KEPT = 3


def _forget_stale_login_attempts() -> None:
    """Drop all but the newest pending login states before adding one (Authlib keys them ``_state_<name>_<state>``
    with their expiry in ``exp``); an attempt dropped here fails at its callback like a tampered state."""
    pending = sorted(
        (key for key in session if key.startswith("_state_")),
        key=lambda key: session[key].get("exp", 0) if isinstance(session[key], dict) else 0,
    )
    for key in pending[: max(0, len(pending) - (PENDING_LOGINS_KEPT - 1))]:
        session.pop(key, None)


def redirect_to_provider(provider: OIDCProvider, redirect_uri: str) -> Response:
    """Send the browser to the provider; Authlib keeps state, nonce and the PKCE verifier in the session."""
    extra = {"acr_values": provider.request_acr} if provider.request_acr else {}
    _forget_stale_login_attempts()
    try:
        return _client(provider).authorize_redirect(redirect_uri, **extra)
    except requests.RequestException as exc:
        raise ProviderUnavailable(f"{provider.label} cannot be reached right now; try again later.") from exc


def verified_claims(provider: OIDCProvider) -> dict[str, Any]:
    """Finish the code flow and return the verified ID token claims, merged with the userinfo answer.

    Authlib checks the state, exchanges the code with the PKCE verifier, and verifies the ID token's
    signature, issuer, audience, expiry and nonce; any failure becomes ``LoginRefused``.
    """
    client = _client(provider)
    try:
        issuer = client.load_server_metadata().get("issuer")
        # A fresh dict each time: Authlib consumes parts of it. Passing options turns Authlib's own issuer
        # check off, so both the issuer and the audience are named here.
        claims_options = {
            "iss": {"essential": True, "value": issuer},
            "aud": {"essential": True, "value": provider.client_id},
        }
        token = client.authorize_access_token(claims_options=claims_options, leeway=LEEWAY_SECONDS)
    except TOKEN_ERRORS as exc:
        raise LoginRefused(_explain(exc)) from exc
    except requests.RequestException as exc:
        raise ProviderUnavailable(f"{provider.label} cannot be reached right now; try again later.") from exc
    claims = dict(token.get("userinfo") or {})
    if not claims:
        raise LoginRefused("The provider returned no ID token.")
    if client.load_server_metadata().get("userinfo_endpoint"):
        try:
            userinfo = client.userinfo(token=token)
        except (OAuthError, requests.RequestException):
            userinfo = {}
        if userinfo.get("sub") == claims["sub"]:
            claims = {**userinfo, **claims}
    return claims


class ProviderUnavailable(LoginRefused):
    status = 502
    title = "Login provider unavailable"


CLAIM_PROBLEMS = {
    "nonce": "The ID token was not issued for this login (nonce mismatch).",
    "iss": "The ID token was issued by an unexpected party (issuer mismatch).",
    "aud": "The ID token was issued for another application (audience mismatch).",
    "azp": "The ID token was issued for another application (audience mismatch).",
    "exp": "The ID token has expired; log in again.",
}


def _explain(exc: BaseException) -> str:
    if isinstance(exc, MismatchingStateError):
        return "The login answer does not belong to this browser session (state mismatch). Start again."
    if isinstance(exc, OAuthError):
        if exc.error == "access_denied":
            return "You declined the login at the provider."
        if exc.error == "invalid_grant":
            return "The login code was already used or has expired. Start again."
        return f"The provider refused the login ({exc.error}: {exc.description or 'no reason given'})."
    if isinstance(exc, ExpiredTokenError):
        return CLAIM_PROBLEMS["exp"]
    if isinstance(exc, ClaimError):
        return CLAIM_PROBLEMS.get(exc.claim, f"The ID token's claim '{exc.claim}' is not acceptable.")
    return f"The provider's ID token could not be verified ({type(exc).__name__})."
