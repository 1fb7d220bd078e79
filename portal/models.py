"""Imports every package's models so that SQLModel.metadata knows all tables (Alembic, tests)."""

from portal.identity.models import ApiToken, ExternalIdentity, Login, RoleGrant, User
from portal.projects.models import (
    Invitation,
    Organisation,
    OrganisationMembership,
    Project,
    ProjectMembership,
)

__all__ = [
    "ApiToken",
    "ExternalIdentity",
    "Invitation",
    "Login",
    "Organisation",
    "OrganisationMembership",
    "Project",
    "ProjectMembership",
    "RoleGrant",
    "User",
]
