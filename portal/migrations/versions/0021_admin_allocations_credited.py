"""allocations opened by an operator: their opening hours count as credited

An allocation opened by hand (source ``admin``) gets its hours as an adjustment entry, which ``credited`` did not
count, so "% used", "Granted" and exhaustion ignored them. ``credited`` now includes that opening entry (the
allocation's first); the entries themselves stay as they are (append-only). An active one whose balance is spent
becomes exhausted, as it would have.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 23:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

allocations = sa.table(
    "allocations", sa.column("id"), sa.column("source"), sa.column("state"), sa.column("balance"), sa.column("credited")
)
entries = sa.table(
    "ledger_entries", sa.column("id"), sa.column("allocation_id"), sa.column("kind"), sa.column("amount")
)


def _opening() -> sa.ScalarSelect[int]:
    """The amount of an allocation's opening entry: its first, where that is an adjustment adding hours."""
    earliest, entry = entries.alias("earliest"), entries.alias("entry")
    first_id = (
        sa.select(sa.func.min(earliest.c.id))
        .where(earliest.c.allocation_id == allocations.c.id)
        .correlate(allocations)
        .scalar_subquery()
    )
    return (
        sa.select(entry.c.amount)
        .where(entry.c.id == first_id, entry.c.kind == "adjustment", entry.c.amount > 0)
        .correlate(allocations)
        .scalar_subquery()
    )


def _move_credited(sign: int) -> None:
    opening = _opening()
    op.execute(
        allocations.update()
        .where(allocations.c.source == "admin", opening.isnot(None))
        .values(credited=allocations.c.credited + sign * opening)
    )


def upgrade() -> None:
    _move_credited(+1)
    op.execute(
        allocations.update()
        .where(
            allocations.c.source == "admin",
            allocations.c.state == "active",
            allocations.c.balance <= 0,
            allocations.c.credited > 0,
        )
        .values(state="exhausted")
    )


def downgrade() -> None:
    _move_credited(-1)
