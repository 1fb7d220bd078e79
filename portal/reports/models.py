"""The reports' own table: which sites a site operator sees.

The monthly rollups the dashboards read belong to their producers: ``portal.ledger.models.UsageMonth``
(written with the daily usage, in the charge's transaction) and ``portal.market.models.RevenueMonth``
(written with the invoice); ``portal.reports.rollups`` rebuilds and checks them.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from portal.db import UTCDateTime, utcnow


class OperatorSite(SQLModel, table=True):
    """A site whose figures a site operator sees; an operator without any sees no site's figures."""

    __tablename__ = "operator_sites"

    user_id: int = Field(foreign_key="users.id", primary_key=True)
    site_id: int = Field(foreign_key="sites.id", primary_key=True)
    assigned_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
