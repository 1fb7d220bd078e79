"""Periodic work of the reports for ``portal worker``."""

from __future__ import annotations

import logging

from sqlmodel import Session

from portal.config import Settings
from portal.reports import rollups

log = logging.getLogger("portal.reports.jobs")


def check_report_rollups(db: Session, _settings: Settings) -> int:
    """Compare the dashboards' rollups with a recomputation (daily); differences are logged as errors.

    Returns how many rollup rows differ; ``portal reports rebuild`` repairs them."""
    differences = rollups.rollup_differences(db)
    db.rollback()
    if differences:
        lines = [f"{d.table} {d.key}: stored {d.stored}, recomputed {d.expected}" for d in differences[:50]]
        log.error(
            "report rollups differ from the ledger and invoices (run 'portal reports rebuild'):\n%s", "\n".join(lines)
        )
    return len(differences)
