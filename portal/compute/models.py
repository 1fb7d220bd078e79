"""The hub's OAuth2 authorization codes and access tokens, and its list of active servers as the metering round
read it. The notebook servers the portal let it start are ``portal.notebook_models.NotebookSession``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import UTCDateTime, utcnow


class OAuthCode(SQLModel, table=True):
    """An authorization code issued to the hub; used once (deleted at the token exchange) and short-lived."""

    __tablename__ = "oauth_codes"

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=120, unique=True)
    client_id: str = Field(max_length=100)
    redirect_uri: str = Field(max_length=500)
    scope: str = Field(default="", max_length=200)
    user_id: int = Field(foreign_key="users.id", index=True)
    nonce: str | None = Field(default=None, max_length=200)
    #: PKCE (RFC 7636), when the client sent a challenge.
    code_challenge: str | None = Field(default=None, max_length=128)
    code_challenge_method: str | None = Field(default=None, max_length=10)
    #: The portal session of the user who was granted the code; the access token lives only as long as it.
    web_session_id: int | None = Field(default=None, foreign_key="web_sessions.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)

    # Authlib's authorization code protocol
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.created_at.timestamp())

    def get_code_challenge(self) -> str | None:
        return self.code_challenge

    def get_code_challenge_method(self) -> str | None:
        return self.code_challenge_method

    def is_expired(self) -> bool:
        return self.expires_at <= utcnow()


class OAuthToken(SQLModel, table=True):
    """An access token issued to the hub for a user; only its SHA-256 digest is stored."""

    __tablename__ = "oauth_tokens"

    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(max_length=64, unique=True)
    client_id: str = Field(max_length=100)
    user_id: int = Field(foreign_key="users.id", index=True)
    scope: str = Field(default="", max_length=200)
    #: The portal session it was issued through: ending that session (logout, ...) ends the token.
    web_session_id: int | None = Field(default=None, foreign_key="web_sessions.id", index=True)
    issued_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked: bool = Field(default=False)


class HubListing(SQLModel, table=True):
    """The active servers of a hub as the latest metering round read them, one row per hub. The workers that
    share a round read the hub once: the first lists it and stores the list here (holding this row's lock
    meanwhile), the others join its round (its time and its list) instead of asking JupyterHub, one process,
    for all its users again."""

    __tablename__ = "hub_listings"

    #: The hub's API URL.
    hub: str = Field(primary_key=True, max_length=500)
    #: The round's time: what its charges run up to. The list was read after it.
    round_at: datetime = Field(sa_type=UTCDateTime)
    #: ``[user, server name, ready, pending action or null, started (ISO 8601) or null]`` per active server.
    servers: list[Any] = Field(default_factory=list, sa_type=sa.JSON)
