"""classroom: a removed student's seat settles once their notebooks can no longer be charged

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import portal.db

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("course_seats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settled_at", portal.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("seat_freed", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Removals made before this revision settled at once (the old rule): mark them settled.
    op.execute("UPDATE course_seats SET settled_at = removed_at WHERE removed_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("course_seats", schema=None) as batch_op:
        batch_op.drop_column("seat_freed")
        batch_op.drop_column("settled_at")
