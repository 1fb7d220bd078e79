"""hub_listings: the hub's active servers as the latest metering round read them, shared by the workers in it

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-04 13:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from portal.db import UTCDateTime

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_listings",
        sa.Column("hub", sa.String(length=500), nullable=False),
        sa.Column("round_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("servers", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("hub", name=op.f("pk_hub_listings")),
    )


def downgrade() -> None:
    op.drop_table("hub_listings")
