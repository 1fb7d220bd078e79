"""reports: monthly usage and revenue rollups, sites of site operators

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 10:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import portal.db

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_usage_months",
        sa.Column("allocation_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["allocation_id"], ["allocations.id"], name=op.f("fk_report_usage_months_allocation_id_allocations")
        ),
        sa.PrimaryKeyConstraint("allocation_id", "month", name=op.f("pk_report_usage_months")),
    )
    with op.batch_alter_table("report_usage_months", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_report_usage_months_month"), ["month"], unique=False)

    op.create_table(
        "report_revenue_months",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("offering_id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("net_cents", sa.BigInteger(), nullable=False),
        sa.Column("vat_cents", sa.BigInteger(), nullable=False),
        sa.Column("gross_cents", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["offering_id"], ["offerings.id"], name=op.f("fk_report_revenue_months_offering_id_offerings")
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_report_revenue_months_organisation_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("month", "offering_id", "organisation_id", name=op.f("pk_report_revenue_months")),
    )
    with op.batch_alter_table("report_revenue_months", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_report_revenue_months_month"), ["month"], unique=False)

    op.create_table(
        "operator_sites",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("assigned_at", portal.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_operator_sites_site_id_sites")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_operator_sites_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", "site_id", name=op.f("pk_operator_sites")),
    )


def downgrade() -> None:
    op.drop_table("operator_sites")
    with op.batch_alter_table("report_revenue_months", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_revenue_months_month"))
    op.drop_table("report_revenue_months")
    with op.batch_alter_table("report_usage_months", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_usage_months_month"))
    op.drop_table("report_usage_months")
