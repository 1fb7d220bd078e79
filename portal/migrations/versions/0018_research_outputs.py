"""grants: research outputs of projects, and the progress and final reports of awards

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 19:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import portal.db

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "research_outputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("doi", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column("citation", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("added_by_id", sa.Integer(), nullable=False),
        sa.Column("created_at", portal.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("year BETWEEN 1900 AND 2999", name=op.f("ck_research_outputs_year_plausible")),
        sa.ForeignKeyConstraint(["added_by_id"], ["users.id"], name=op.f("fk_research_outputs_added_by_id_users")),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_research_outputs_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_research_outputs")),
    )
    with op.batch_alter_table("research_outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_research_outputs_project_id"), ["project_id"], unique=False)

    op.create_table(
        "progress_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("requested_at", portal.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("text", sqlmodel.sql.sqltypes.AutoString(length=20000), nullable=False),
        sa.Column("submitted_at", portal.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("submitted_by_id", sa.Integer(), nullable=True),
        sa.Column("reminded_at", portal.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("overdue_notified_at", portal.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"], ["applications.id"], name=op.f("fk_progress_reports_application_id_applications")
        ),
        sa.ForeignKeyConstraint(
            ["submitted_by_id"], ["users.id"], name=op.f("fk_progress_reports_submitted_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_progress_reports")),
        sa.UniqueConstraint("application_id", "kind", name=op.f("uq_progress_reports_application_id_kind")),
    )
    with op.batch_alter_table("progress_reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_progress_reports_application_id"), ["application_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("progress_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_progress_reports_application_id"))
    op.drop_table("progress_reports")
    with op.batch_alter_table("research_outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_research_outputs_project_id"))
    op.drop_table("research_outputs")
