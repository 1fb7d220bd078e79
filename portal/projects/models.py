"""Organisations, their projects, memberships and invitations."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import StrEnumType, UTCDateTime, utcnow


class OrganisationKind(StrEnum):
    UNIVERSITY = "university"
    PUBLIC_BODY = "public_body"
    SME = "sme"
    LARGE_COMPANY = "large_company"

    @property
    def label(self) -> str:
        return {
            "university": "University or research institute",
            "public_body": "Public body",
            "sme": "SME or startup",
            "large_company": "Large company",
        }[self.value]


class OrganisationRole(StrEnum):
    """Roles inside an organisation: admins manage it, billing members may buy for it."""

    ADMIN = "admin"
    BILLING = "billing"
    MEMBER = "member"


class ProjectRole(StrEnum):
    PI = "pi"
    MANAGER = "manager"
    MEMBER = "member"

    @property
    def label(self) -> str:
        return {"pi": "Principal investigator", "manager": "Manager", "member": "Member"}[self.value]


class Organisation(SQLModel, table=True):
    __tablename__ = "organisations"
    __table_args__ = (
        sa.UniqueConstraint("country", "registry_id"),
        sa.CheckConstraint("length(country) = 2", name="country_iso2"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    kind: OrganisationKind = Field(sa_type=StrEnumType(OrganisationKind, 32))
    #: ISO 3166-1 alpha-2 code, upper case.
    country: str = Field(max_length=2)
    #: National business or institution registry number, normalised; validated where stdnum knows the country.
    registry_id: str | None = Field(default=None, max_length=64)
    #: EU VAT number with its country prefix, normalised (``PL5260250274``).
    vat_number: str | None = Field(default=None, max_length=32)
    #: Set when factory staff have checked the organisation; buying needs it.
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by_id: int = Field(foreign_key="users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OrganisationMembership(SQLModel, table=True):
    __tablename__ = "organisation_memberships"
    __table_args__ = (sa.UniqueConstraint("organisation_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    role: OrganisationRole = Field(sa_type=StrEnumType(OrganisationRole, 16))
    joined_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Project(SQLModel, table=True):
    """An organisation's project, or a person's own (*personal*) project holding the hours they bought as a
    private buyer: exactly one of ``organisation_id`` and ``owner_id`` is set."""

    __tablename__ = "projects"
    __table_args__ = (
        sa.CheckConstraint("(organisation_id IS NULL) <> (owner_id IS NULL)", name="organisation_or_owner"),
        # the dashboard's order (``projects.services.DASHBOARD_ORDER``): a page of someone's projects walks it
        # and stops after the page, instead of sorting all their projects (its cost grew with their number)
        sa.Index("ix_projects_dashboard_order", sa.text("(archived_at IS NOT NULL)"), "title", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: The organisation owning the project; None for a personal project.
    organisation_id: int | None = Field(default=None, foreign_key="organisations.id", index=True)
    #: The person a personal project belongs to (one each, made by their first purchase); None otherwise.
    owner_id: int | None = Field(default=None, foreign_key="users.id", unique=True)
    title: str = Field(max_length=200)
    description: str = Field(default="", max_length=5000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    #: Archived projects keep their history but take no new members.
    archived_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ProjectMembership(SQLModel, table=True):
    """A user's role in a project; each project has exactly one PI."""

    __tablename__ = "project_memberships"
    __table_args__ = (sa.UniqueConstraint("project_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    role: ProjectRole = Field(sa_type=StrEnumType(ProjectRole, 16))
    joined_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Invitation(SQLModel, table=True):
    """An e-mailed link that lets whoever holds it join a project; the token is stored only as a digest."""

    __tablename__ = "invitations"

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    email: str = Field(max_length=320)
    role: ProjectRole = Field(sa_type=StrEnumType(ProjectRole, 16))
    digest: str = Field(max_length=64, unique=True)
    invited_by_id: int = Field(foreign_key="users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    accepted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    accepted_by_id: int | None = Field(default=None, foreign_key="users.id")
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    def state(self, now: datetime) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "pending"
