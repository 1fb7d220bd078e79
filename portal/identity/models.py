"""Users, their linked external identities and logins, factory roles and personal API tokens."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.config import AssuranceLevel
from portal.db import StrEnumType, UTCDateTime, utcnow


class FactoryRole(StrEnum):
    ADMIN = "admin"
    FINANCE = "finance"
    SITE_OPERATOR = "site_operator"
    REVIEWER = "reviewer"


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    #: Name shown across the portal, taken from the first login and editable by the user.
    display_name: str = Field(max_length=200)
    #: Contact address: a verified e-mail from a provider, never used to match identities.
    email: str | None = Field(default=None, max_length=320, index=True)
    #: Deactivated users cannot log in or use their API tokens.
    is_active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: The language the user chose with the switch (``portal.i18n``): their pages, e-mails and notices follow it;
    #: none chosen: the browser's choice, then its ``Accept-Language``.
    preferred_language: str | None = Field(default=None, max_length=8)

    # Flask-Login's user protocol
    is_authenticated: ClassVar[bool] = True
    is_anonymous: ClassVar[bool] = False

    def get_id(self) -> str:
        return str(self.id)


class ExternalIdentity(SQLModel, table=True):
    """An account at an OIDC provider, keyed on (provider, subject) and linked to exactly one user."""

    __tablename__ = "external_identities"
    __table_args__ = (sa.UniqueConstraint("provider", "subject"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    #: The configured provider's name.
    provider: str = Field(max_length=32)
    #: The provider's ``sub`` claim.
    subject: str = Field(max_length=255)
    #: Level of assurance of the most recent login.
    level: AssuranceLevel = Field(sa_type=StrEnumType(AssuranceLevel, 16))
    #: Verified attributes of the most recent login (names, verified e-mail, affiliations, ...).
    attributes: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    linked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Login(SQLModel, table=True):
    """One successful login, as the provider asserted it; the session refers to it for its assurance level."""

    __tablename__ = "logins"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    #: The identity used; None once that identity was unlinked (provider and subject stay recorded).
    identity_id: int | None = Field(default=None, foreign_key="external_identities.id", ondelete="SET NULL")
    provider: str = Field(max_length=32)
    subject: str = Field(max_length=255)
    #: The raw ``acr`` claim, and the level it maps to.
    acr: str | None = Field(default=None, max_length=255)
    level: AssuranceLevel = Field(sa_type=StrEnumType(AssuranceLevel, 16))
    #: The ``amr`` claim (authentication methods).
    amr: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    #: When the user authenticated at the provider (``auth_time``), if it said.
    auth_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    logged_in_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WebSession(SQLModel, table=True):
    """A browser's login, kept on the server so that it can be ended: the signed cookie holds only a random key,
    whose SHA-256 digest is stored here. A session counts while it has not ended and its absolute lifetime has
    not run out; logging out, "log out everywhere", losing a role and deactivation end it."""

    __tablename__ = "web_sessions"

    id: int | None = Field(default=None, primary_key=True)
    #: SHA-256 digest of the random key in the session cookie.
    key_digest: str = Field(max_length=64, unique=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    #: The login that started it (its provider and level of assurance).
    login_id: int | None = Field(default=None, foreign_key="logins.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    #: Absolute end: the session is over then, however active its user is.
    expires_at: datetime = Field(sa_type=UTCDateTime)
    #: When it was ended before its time, and why (``logout``, ``logout_everywhere``, ``role_revoked``, ...).
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    end_reason: str = Field(default="", max_length=32)

    def is_live(self, now: datetime) -> bool:
        return self.ended_at is None and self.expires_at > now


class RoleGrant(SQLModel, table=True):
    """A factory role held by a user, granted by an admin."""

    __tablename__ = "role_grants"
    __table_args__ = (sa.UniqueConstraint("user_id", "role"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    role: FactoryRole = Field(sa_type=StrEnumType(FactoryRole, 32))
    #: The admin who granted it; None for grants from the command line.
    granted_by_id: int | None = Field(default=None, foreign_key="users.id")
    granted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ApiScope(StrEnum):
    READ = "read"
    WRITE = "write"
    #: Site agents reporting usage; such a token is bound to one site.
    USAGE_WRITE = "usage:write"
    #: The operators' dashboards' figures (``/api/v1/reports/...``), for staff who may see them.
    REPORTS_READ = "reports:read"
    #: Operator set-up over ``/api/v1/admin/...``: sites, resources, capacity, manual allocations, Slurm accounts.
    OPERATE = "operate"
    #: Factory roles of users over ``/api/v1/admin/users/...``.
    ADMIN = "admin"


#: The scopes only holders of these factory roles may put in a token, and use while they hold one of them
#: (``identity.services.create_api_token`` and ``authenticate_api_token``). Each action behind such a scope
#: still asks ``authz.require`` (a site operator's ``operate`` token plans capacity, it opens no allocation).
PRIVILEGED_SCOPES: dict[ApiScope, frozenset[FactoryRole]] = {
    ApiScope.OPERATE: frozenset({FactoryRole.ADMIN, FactoryRole.SITE_OPERATOR}),
    ApiScope.ADMIN: frozenset({FactoryRole.ADMIN}),
}


class ApiToken(SQLModel, table=True):
    """A personal API token; only its SHA-256 digest is stored, the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(max_length=100)
    #: The first characters of the token, to tell tokens apart in lists.
    prefix: str = Field(max_length=16)
    digest: str = Field(max_length=64, unique=True)
    scopes: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    #: The site a ``usage:write`` token reports for; None for personal tokens.
    site_id: int | None = Field(default=None, foreign_key="sites.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: The provider and level of assurance of the login in whose session the token was made, and the academic
    #: affiliations it asserted: steps that ask the performing login's level (applying as PI) ask this one's.
    #: None for tokens made outside a login (the command line, site tokens).
    login_provider: str | None = Field(default=None, max_length=32)
    login_level: AssuranceLevel | None = Field(default=None, sa_type=StrEnumType(AssuranceLevel, 16))
    login_affiliations: list[str] = Field(default_factory=list, sa_type=sa.JSON)

    def login(self) -> Login | None:
        """The login the token acts with, as the services read one (its level and affiliations); not stored."""
        if self.login_level is None:
            return None
        return Login(
            user_id=self.user_id,
            provider=self.login_provider or "",
            subject="",
            level=self.login_level,
            attributes={"external_affiliation": list(self.login_affiliations)} if self.login_affiliations else {},
        )
