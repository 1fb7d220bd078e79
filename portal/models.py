"""Imports every package's models so that SQLModel.metadata knows all tables (Alembic, tests)."""

from portal.compute.models import NotebookSession, OAuthCode, OAuthToken
from portal.grants.models import (
    Application,
    ApplicationFile,
    ApplicationVersion,
    Award,
    Call,
    CallBudget,
    Reply,
    ResourceRequest,
    Review,
)
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
from portal.market.models import (
    Invoice,
    InvoiceSequence,
    Offering,
    OfferingPrice,
    Order,
    StripeEvent,
)
from portal.metering.models import SlurmAccount, SlurmPull, UsageRecord
from portal.notifications.models import Notification
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
    "Application",
    "ApplicationFile",
    "ApplicationVersion",
    "Award",
    "Call",
    "CallBudget",
    "CapacityPeriod",
    "CapacityReservation",
    "DailyUsage",
    "ExternalIdentity",
    "Invitation",
    "Invoice",
    "InvoiceSequence",
    "LedgerEntry",
    "Login",
    "NotebookSession",
    "Notification",
    "OAuthCode",
    "OAuthToken",
    "Offering",
    "OfferingPrice",
    "Order",
    "Organisation",
    "OrganisationMembership",
    "Project",
    "ProjectMembership",
    "Reply",
    "Resource",
    "ResourceRequest",
    "Review",
    "RoleGrant",
    "Site",
    "SlurmAccount",
    "SlurmPull",
    "StripeEvent",
    "UsageRecord",
    "User",
]
