"""Periodic metering work for ``portal worker``: Slurm's accounting and limits (the notebooks are metered by
``compute.launch.meter_job``)."""

from __future__ import annotations

from sqlmodel import Session

from portal.config import Settings


def pull_slurm_usage(db: Session, settings: Settings) -> int:
    """Charge the finished jobs of every configured Slurm cluster (``portal usage pull-sacct``); returns
    how many jobs were charged. Several workers may run it: each cluster is pulled under a lock."""
    from portal.metering.slurm import pull_all

    return pull_all(db, settings.slurm_clusters)


def sync_slurm_accounts(db: Session, settings: Settings) -> int:
    """Bring every configured cluster's accounts and limits in line (``portal slurm sync``): holds
    exhausted allocations soon after their usage is charged; returns the number of sacctmgr changes."""
    from portal.metering.slurm import sync_all

    return sync_all(db, settings.slurm_clusters)
