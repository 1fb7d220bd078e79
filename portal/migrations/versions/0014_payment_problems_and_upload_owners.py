"""market: an order's payment problem for finance; grants: who uploaded each file (per-user upload quotas)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("problem", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
    with op.batch_alter_table("application_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uploaded_by_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_application_files_uploaded_by_id"), ["uploaded_by_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_application_files_uploaded_by_id_users"), "users", ["uploaded_by_id"], ["id"]
        )
    # files uploaded before: their application's applicant
    op.execute(
        "UPDATE application_files SET uploaded_by_id = "
        "(SELECT applicant_id FROM applications WHERE applications.id = application_files.application_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("application_files", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_application_files_uploaded_by_id_users"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_application_files_uploaded_by_id"))
        batch_op.drop_column("uploaded_by_id")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("problem")
