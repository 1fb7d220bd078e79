"""The portal as an OAuth2 authorization server for the JupyterHub (Authlib's Flask integration).

One confidential client, the hub, configured by the ``hub_oauth_*`` settings: authorization code grant,
client authentication ``client_secret_basic`` or ``client_secret_post``, PKCE optional. The hub is trusted,
so a logged-in user is granted at once without a consent page, but codes go only to the configured
redirect URI. Codes live ten minutes and are used once; access tokens are stored as SHA-256 digests. Codes and
tokens belong to the portal session that granted them: once it ends (logout, "log out everywhere", a role
revoked, deactivation, its absolute lifetime), neither works any more.

Routes: ``GET|POST /oauth/authorize``, ``POST /oauth/token``, ``GET /oauth/userinfo``.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Blueprint, Flask, current_app, jsonify, request
from flask_login import login_required
from sqlmodel import Session, select

from portal import web
from portal.compute.models import OAuthCode, OAuthToken
from portal.compute.services import hub_username
from portal.config import Settings
from portal.db import get_db, utcnow
from portal.identity.models import User, WebSession

#: Scopes the hub may ask for; others are dropped from the grant.
SCOPES = ("openid", "profile", "email")
CODE_TTL = timedelta(minutes=10)
TOKEN_TTL_SECONDS = 3600

bp = Blueprint("oauth", __name__, url_prefix="/oauth")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class HubClient:
    """The hub as Authlib's client, from the settings (there is no client table)."""

    def __init__(self, settings: Settings) -> None:
        self.client_id = settings.hub_oauth_client_id
        self.client_secret = settings.hub_oauth_client_secret
        self.redirect_uri = settings.hub_oauth_redirect_uri

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        return " ".join(s for s in scope.split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return hmac.compare_digest(redirect_uri.encode(), self.redirect_uri.encode())

    def check_client_secret(self, client_secret: str) -> bool:
        # An empty secret (production before it is set) matches nothing.
        return bool(self.client_secret) and hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


class HubAuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def save_authorization_code(self, code: str, request: Any) -> OAuthCode:
        data = request.payload.data
        db = get_db()
        row = OAuthCode(
            code=code,
            client_id=request.client.get_client_id(),
            redirect_uri=request.payload.redirect_uri or request.client.get_default_redirect_uri(),
            scope=request.scope or "",
            user_id=request.user.id,
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            web_session_id=web_session.id if (web_session := web.current_web_session()) else None,
            expires_at=utcnow() + CODE_TTL,
        )
        db.add(row)
        db.commit()
        return row

    def query_authorization_code(self, code: str, client: HubClient) -> OAuthCode | None:
        row = (
            get_db()
            .exec(select(OAuthCode).where(OAuthCode.code == code, OAuthCode.client_id == client.get_client_id()))
            .first()
        )
        if row is None or row.is_expired():
            return None
        return row

    def delete_authorization_code(self, authorization_code: OAuthCode) -> None:
        db = get_db()
        db.delete(authorization_code)
        db.commit()

    def authenticate_user(self, authorization_code: OAuthCode) -> User | None:
        db = get_db()
        if not _session_is_live(db, authorization_code.web_session_id):
            return None  # the user logged out between the code and its exchange
        user = db.get(User, authorization_code.user_id)
        return user if user is not None and user.is_active else None


def _session_is_live(db: Session, web_session_id: int | None) -> bool:
    """Whether the portal session a code or token came from still counts (rows from before sessions were kept
    server-side name none, and live out their short lifetime)."""
    if web_session_id is None:
        return True
    row = db.get(WebSession, web_session_id)
    return row is not None and row.is_live(utcnow())


def _query_client(client_id: str) -> HubClient | None:
    client = HubClient(web.settings())
    return client if client_id and hmac.compare_digest(client_id.encode(), client.client_id.encode()) else None


def _save_token(token: dict[str, Any], request: Any) -> None:
    db = get_db()
    db.add(
        OAuthToken(
            digest=token_digest(token["access_token"]),
            client_id=request.client.get_client_id(),
            user_id=request.user.id,
            scope=token.get("scope", ""),
            web_session_id=request.authorization_code.web_session_id,
            expires_at=utcnow() + timedelta(seconds=int(token.get("expires_in", TOKEN_TTL_SECONDS))),
        )
    )
    db.commit()


def init_app(app: Flask) -> None:
    """One authorization server per application (each has its own settings)."""
    app.config.setdefault("OAUTH2_TOKEN_EXPIRES_IN", {"authorization_code": TOKEN_TTL_SECONDS})
    app.config.setdefault("OAUTH2_REFRESH_TOKEN_GENERATOR", False)
    server = AuthorizationServer(app, query_client=_query_client, save_token=_save_token)
    server.register_grant(HubAuthorizationCodeGrant, [CodeChallenge(required=False)])
    app.extensions["portal.oauth_server"] = server
    web.csrf.exempt(token)  # the hub authenticates with its client credentials, not a session
    app.register_blueprint(bp)


def _server() -> AuthorizationServer:
    return current_app.extensions["portal.oauth_server"]


@bp.route("/authorize", methods=["GET", "POST"])
@login_required
def authorize():
    """Grant the hub a code for the logged-in user at once (trusted client); codes only to its URI."""
    server = _server()
    try:
        grant = server.get_consent_grant(end_user=web.actor())
    except OAuth2Error as error:
        return server.handle_error_response(server.create_oauth2_request(None), error)
    return server.create_authorization_response(grant_user=web.actor(), grant=grant)


@bp.post("/token")
def token():
    return _server().create_token_response()


def user_for_access_token(db: Session, plain: str) -> User | None:
    """The active user an unexpired, unrevoked access token was issued for, while the portal session it was
    issued through lasts; otherwise None."""
    row = db.exec(select(OAuthToken).where(OAuthToken.digest == token_digest(plain))).first()
    if row is None or row.revoked or row.expires_at <= utcnow() or not _session_is_live(db, row.web_session_id):
        return None
    user = db.get(User, row.user_id)
    return user if user is not None and user.is_active else None


@bp.get("/userinfo")
def userinfo():
    """Who the access token belongs to, with the hub user name the hub must use (``name``)."""
    kind, _, plain = request.headers.get("Authorization", "").partition(" ")
    user = user_for_access_token(get_db(), plain.strip()) if kind.lower() == "bearer" and plain.strip() else None
    if user is None:
        response = jsonify(error="invalid_token", error_description="The access token is unknown, expired or revoked.")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    return jsonify(
        sub=str(user.id),
        name=hub_username(user),
        preferred_username=hub_username(user),
        email=user.email,
        display_name=user.display_name,
    )
