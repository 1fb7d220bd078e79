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
from portal.messages import N_, Message

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


def _client(provider: OIDCProvider):
    client = current_app.extensions["portal.oauth"].create_client(provider.name)
    if client is None:
        raise NotFound(Message(N_("No such login provider.")))
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
        raise ProviderUnavailable(_unreachable(provider)) from exc


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
        raise ProviderUnavailable(_unreachable(provider)) from exc
    claims = dict(token.get("userinfo") or {})
    if not claims:
        raise LoginRefused(Message(N_("The provider returned no ID token.")))
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


def _unreachable(provider: OIDCProvider) -> Message:
    return Message(N_("%(provider)s cannot be reached right now; try again later."), provider=provider.label)


CLAIM_PROBLEMS = {
    "nonce": N_("The ID token was not issued for this login (nonce mismatch)."),
    "iss": N_("The ID token was issued by an unexpected party (issuer mismatch)."),
    "aud": N_("The ID token was issued for another application (audience mismatch)."),
    "azp": N_("The ID token was issued for another application (audience mismatch)."),
    "exp": N_("The ID token has expired; log in again."),
}


def _explain(exc: BaseException) -> Message:
    if isinstance(exc, MismatchingStateError):
        return Message(N_("The login answer does not belong to this browser session (state mismatch). Start again."))
    if isinstance(exc, OAuthError):
        if exc.error == "access_denied":
            return Message(N_("You declined the login at the provider."))
        if exc.error == "invalid_grant":
            return Message(N_("The login code was already used or has expired. Start again."))
        if exc.description:
            return Message(
                N_("The provider refused the login (%(error)s: %(reason)s)."),
                error=exc.error,
                reason=exc.description,
            )
        return Message(N_("The provider refused the login (%(error)s: no reason given)."), error=exc.error)
    if isinstance(exc, ExpiredTokenError):
        return Message(CLAIM_PROBLEMS["exp"])
    if isinstance(exc, ClaimError):
        if exc.claim in CLAIM_PROBLEMS:
            return Message(CLAIM_PROBLEMS[exc.claim])
        return Message(N_("The ID token's claim '%(claim)s' is not acceptable."), claim=exc.claim)
    return Message(N_("The provider's ID token could not be verified (%(problem)s)."), problem=type(exc).__name__)
