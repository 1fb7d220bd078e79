"""The reports' own tables: monthly rollups of usage and revenue, and which sites a site operator sees.

The rollups are written in the same transaction as what they summarise (a usage charge, an invoice), so
dashboards read a few small rows per month instead of the ledger; ``portal reports rebuild`` recomputes
them from the ledger's daily usage and the invoices, and ``portal reports check`` compares.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import UTCDateTime, utcnow


class UsageMonth(SQLModel, table=True):
    """Usage of one allocation in one calendar month (UTC), by the usage's day as the ledger counts it."""

    __tablename__ = "report_usage_months"

    allocation_id: int = Field(foreign_key="allocations.id", primary_key=True)
    #: First day of the month.
    month: date = Field(primary_key=True, index=True)
    #: Base units charged as usage in that month.
    amount: int = Field(default=0, sa_type=sa.BigInteger)


class RevenueMonth(SQLModel, table=True):
    """Invoiced amounts (credit notes subtracted) per month of issue, offering and buying organisation."""

    __tablename__ = "report_revenue_months"

    #: First day of the month the invoices were issued in (UTC).
    month: date = Field(primary_key=True, index=True)
    offering_id: int = Field(foreign_key="offerings.id", primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", primary_key=True)
    #: Display units (hours) invoiced, credit notes subtracted.
    quantity: int = Field(default=0, sa_type=sa.BigInteger)
    net_cents: int = Field(default=0, sa_type=sa.BigInteger)
    vat_cents: int = Field(default=0, sa_type=sa.BigInteger)
    gross_cents: int = Field(default=0, sa_type=sa.BigInteger)


class OperatorSite(SQLModel, table=True):
    """A site whose figures a site operator sees; an operator without any sees no site's figures."""

    __tablename__ = "operator_sites"

    user_id: int = Field(foreign_key="users.id", primary_key=True)
    site_id: int = Field(foreign_key="sites.id", primary_key=True)
    assigned_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
