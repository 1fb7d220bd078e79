"""Imports every package's models so that SQLModel.metadata knows all tables (Alembic, tests)."""

from portal.identity.models import ApiToken, ExternalIdentity, Login, RoleGrant, User
from portal.ledger.models import (
    Allocation,
    CapacityPeriod,
    CapacityReservation,
    DailyUsage,
    LedgerEntry,
    Resource,
    Site,
)
from portal.metering.models import SlurmAccount, SlurmPull, UsageRecord
from portal.projects.models import (
    Invitation,
    Organisation,
    OrganisationMembership,
    Project,
    ProjectMembership,
)

__all__ = [
    "Allocation",
    "ApiToken",
    "CapacityPeriod",
    "CapacityReservation",
    "DailyUsage",
    "ExternalIdentity",
    "Invitation",
    "LedgerEntry",
    "Login",
    "Organisation",
    "OrganisationMembership",
    "Project",
    "ProjectMembership",
    "Resource",
    "RoleGrant",
    "Site",
    "SlurmAccount",
    "SlurmPull",
    "UsageRecord",
    "User",
]
