"""The hub's OAuth2 authorization codes and access tokens, and the notebook servers the portal let it start."""

from __future__ import annotations

from datetime import datetime

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


class NotebookSession(SQLModel, table=True):
    """A notebook server the spawn check accepted; the metering worker charges its running time from here."""

    __tablename__ = "notebook_sessions"
    __table_args__ = (sa.Index("ix_notebook_sessions_hub_user_server_name", "hub_user", "server_name"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    allocation_id: int = Field(foreign_key="allocations.id", index=True)
    #: The user's name at the hub (``u<user id>``) and the named server ("" for the default server).
    hub_user: str = Field(max_length=100)
    server_name: str = Field(default="", max_length=255)
    #: The notebook profile's name, and its size at the time of the spawn.
    profile: str = Field(max_length=32)
    gpus: int = Field(default=0)
    cpus: int = Field(default=0)
    #: The longest the server may run (the hours asked for), in seconds.
    max_seconds: int = Field(sa_type=sa.BigInteger)
    requested_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    stopped_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Why it stopped: ``user``, ``exhausted``, ``time_limit``, ... ("" while it runs).
    stop_reason: str = Field(default="", max_length=32)
    #: Seconds of running time charged to the allocation so far.
    charged_seconds: int = Field(default=0, sa_type=sa.BigInteger)
    #: The student's seat when the allocation is a course's; its use counts against the seat's cap.
    course_seat_id: int | None = Field(default=None, foreign_key="course_seats.id", index=True)
    #: The Slurm cluster the server runs on as a job, and the account it runs under; None for a server on the
    #: hub's own machine. A Slurm job is charged once, from sacct (its real AllocTRES and elapsed time), never
    #: by the portal's metering.
    slurm_cluster: str | None = Field(default=None, max_length=64)
    slurm_account: str | None = Field(default=None, max_length=64)
    #: When a worker last claimed the session for metering (``SKIP LOCKED``): the other workers leave it to that
    #: worker for the rest of the round, so N workers share the sessions instead of each walking all of them.
    metered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def charged_from_slurm(self) -> bool:
        return self.slurm_cluster is not None
