"""worker: a shared schedule of the periodic jobs and metering claims, so that workers scale out

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import portal.db

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("next_run_at", portal.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("leased_until", portal.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", portal.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", portal.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("notebook_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("metered_at", portal.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notebook_sessions", schema=None) as batch_op:
        batch_op.drop_column("metered_at")
    op.drop_table("worker_jobs")
