"""Usage from JupyterHub, Slurm (``sacct``) and site agents, charged to the ledger; Slurm limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from portal.worker import AddJob

#: Its ``portal`` command groups: name -> (``module:group``, the group's summary); see ``portal.cli``.
CLI_GROUPS: dict[str, tuple[str, str]] = {
    "slurm": ("portal.metering.cli:slurm", "Slurm accounts, users and limits of the configured clusters."),
    "usage": ("portal.metering.cli:usage", "Usage metering."),
}


def init_app(app: Flask) -> None:
    """The site agents' ``POST /api/v1/usage``, and the operators' set-up under ``/api/v1/admin`` (sites,
    resources, capacity, manual allocations, Slurm accounts: the ledger may not import the API)."""
    from portal.metering import admin_api as _admin_api  # noqa: F401  (its routes on the API blueprint)
    from portal.metering import api as _api  # noqa: F401  (its routes on the API blueprint)


def register_jobs(add_job: AddJob) -> None:
    from portal.metering import jobs

    add_job("pull_slurm_usage", every=300, run=jobs.pull_slurm_usage)
    add_job("sync_slurm_accounts", every=300, run=jobs.sync_slurm_accounts)
