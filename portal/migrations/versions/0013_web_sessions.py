"""identity: server-side web sessions (revocable, with an absolute end); hub OAuth codes and tokens name theirs

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import portal.db


revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("login_id", sa.Integer(), nullable=True),
        sa.Column("created_at", portal.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", portal.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", portal.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.ForeignKeyConstraint(["login_id"], ["logins.id"], name=op.f("fk_web_sessions_login_id_logins")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("key_digest", name=op.f("uq_web_sessions_key_digest")),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("oauth_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("web_session_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_oauth_codes_web_session_id_web_sessions"), "web_sessions", ["web_session_id"], ["id"]
        )

    with op.batch_alter_table("oauth_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("web_session_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_oauth_tokens_web_session_id"), ["web_session_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_oauth_tokens_web_session_id_web_sessions"), "web_sessions", ["web_session_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("oauth_tokens", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_oauth_tokens_web_session_id_web_sessions"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_oauth_tokens_web_session_id"))
        batch_op.drop_column("web_session_id")

    with op.batch_alter_table("oauth_codes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_oauth_codes_web_session_id_web_sessions"), type_="foreignkey")
        batch_op.drop_column("web_session_id")

    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_user_id"))

    op.drop_table("web_sessions")
