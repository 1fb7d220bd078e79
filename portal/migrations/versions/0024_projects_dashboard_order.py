"""projects: an index in the dashboard's order, so that a page of someone's projects reads only that page

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-04 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_projects_dashboard_order", "projects", [sa.text("(archived_at IS NOT NULL)"), "title", "id"])


def downgrade() -> None:
    op.drop_index("ix_projects_dashboard_order", table_name="projects")
