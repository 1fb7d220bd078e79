"""Imports every package's models so that SQLModel.metadata knows all tables (Alembic, tests)."""

from portal.audit.models import AuditEvent
from portal.classroom.models import Course, CourseJoinFailure, CourseSeat
from portal.compute.models import HubListing, OAuthCode, OAuthToken
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
from portal.identity.models import ApiToken, ExternalIdentity, Login, RoleGrant, User, WebSession
from portal.ledger.models import (
    Allocation,
    CapacityPeriod,
    CapacityReservation,
    DailyUsage,
    LedgerEntry,
    Resource,
    Site,
    UsageMonth,
)
from portal.market.models import (
    Invoice,
    InvoiceSequence,
    Offering,
    OfferingPrice,
    Order,
    RevenueMonth,
    StripeEvent,
)
from portal.metering.models import SlurmAccount, SlurmPull, UsageRecord
from portal.notebook_models import NotebookSession
from portal.notifications.models import Notification
from portal.projects.models import (
    Invitation,
    Organisation,
    OrganisationMembership,
    Project,
    ProjectMembership,
)
from portal.reports.models import OperatorSite
from portal.worker_models import WorkerJob

__all__ = [
    "Allocation",
    "ApiToken",
    "Application",
    "ApplicationFile",
    "ApplicationVersion",
    "AuditEvent",
    "Award",
    "Call",
    "CallBudget",
    "CapacityPeriod",
    "CapacityReservation",
    "Course",
    "CourseJoinFailure",
    "CourseSeat",
    "DailyUsage",
    "ExternalIdentity",
    "HubListing",
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
    "OperatorSite",
    "Order",
    "Organisation",
    "OrganisationMembership",
    "Project",
    "ProjectMembership",
    "Reply",
    "Resource",
    "ResourceRequest",
    "RevenueMonth",
    "Review",
    "RoleGrant",
    "Site",
    "SlurmAccount",
    "SlurmPull",
    "StripeEvent",
    "UsageMonth",
    "UsageRecord",
    "User",
    "WebSession",
    "WorkerJob",
]
