"""projects: personal projects (an owner, no organisation); market: orders and invoices of private buyers

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 19:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        batch_op.alter_column("organisation_id", existing_type=sa.Integer(), nullable=True)
        batch_op.create_unique_constraint(batch_op.f("uq_projects_owner_id"), ["owner_id"])
        batch_op.create_foreign_key(batch_op.f("fk_projects_owner_id_users"), "users", ["owner_id"], ["id"])
        batch_op.create_check_constraint(
            batch_op.f("ck_projects_organisation_or_owner"), "(organisation_id IS NULL) <> (owner_id IS NULL)"
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.alter_column("organisation_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("billing_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column("billing_address", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
        batch_op.add_column(sa.Column("billing_country", sqlmodel.sql.sqltypes.AutoString(length=2), nullable=True))
        batch_op.add_column(sa.Column("login_country", sqlmodel.sql.sqltypes.AutoString(length=2), nullable=True))
        batch_op.create_check_constraint(
            batch_op.f("ck_orders_organisation_or_private_buyer"),
            "organisation_id IS NOT NULL OR (billing_name IS NOT NULL AND billing_country IS NOT NULL)",
        )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.alter_column("organisation_id", existing_type=sa.Integer(), nullable=True)
    _keep_invoices_immutable_on_sqlite()
    with op.batch_alter_table("report_revenue_months", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_report_revenue_months_organisation_id_organisations"), type_="foreignkey"
        )


def downgrade() -> None:
    bind = op.get_bind()
    personal = bind.execute(sa.text("SELECT count(*) FROM projects WHERE organisation_id IS NULL")).scalar_one()
    private = bind.execute(sa.text("SELECT count(*) FROM orders WHERE organisation_id IS NULL")).scalar_one()
    if personal or private:
        raise RuntimeError(
            f"{personal} personal projects and {private} private buyers' orders exist: revision 0018 has no place "
            "for them, so the database stays at 0019."
        )
    with op.batch_alter_table("report_revenue_months", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_report_revenue_months_organisation_id_organisations"),
            "organisations",
            ["organisation_id"],
            ["id"],
        )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.alter_column("organisation_id", existing_type=sa.Integer(), nullable=False)
    _keep_invoices_immutable_on_sqlite()
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_orders_organisation_or_private_buyer"), type_="check")
        batch_op.drop_column("login_country")
        batch_op.drop_column("billing_country")
        batch_op.drop_column("billing_address")
        batch_op.drop_column("billing_name")
        batch_op.alter_column("organisation_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_projects_organisation_or_owner"), type_="check")
        batch_op.drop_constraint(batch_op.f("fk_projects_owner_id_users"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_projects_owner_id"), type_="unique")
        batch_op.drop_column("owner_id")
        batch_op.alter_column("organisation_id", existing_type=sa.Integer(), nullable=False)


def _keep_invoices_immutable_on_sqlite() -> None:
    """SQLite's batch mode copies ``invoices`` into a new table, without the triggers of 0007 that refuse changing
    or deleting an issued invoice: they are made again (PostgreSQL alters the table in place and keeps its)."""
    if op.get_bind().dialect.name != "sqlite":
        return
    for event in ("UPDATE", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS invoices_no_{event.lower()}")
        op.execute(
            f"CREATE TRIGGER invoices_no_{event.lower()} BEFORE {event} ON invoices "
            "BEGIN SELECT RAISE(ABORT, 'issued invoices are immutable'); END"
        )
