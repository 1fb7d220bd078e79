"""compute: notebook sessions that run as Slurm jobs name their cluster and account (charged from sacct)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 16:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notebook_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slurm_cluster", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column("slurm_account", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notebook_sessions", schema=None) as batch_op:
        batch_op.drop_column("slurm_account")
        batch_op.drop_column("slurm_cluster")
