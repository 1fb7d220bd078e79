"""api_tokens: the provider, level of assurance and affiliations of the login that made the token

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("login_provider", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("login_level", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("login_affiliations", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("login_affiliations")
        batch_op.drop_column("login_level")
        batch_op.drop_column("login_provider")
