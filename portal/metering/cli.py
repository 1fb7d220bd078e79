"""``portal usage ...`` (charging usage from Slurm accounting) and ``portal slurm ...`` (accounts and limits)."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import with_appcontext

from portal.audit.cli import reason_option
from portal.commands import refusal

if TYPE_CHECKING:
    from portal.config import SlurmClusterConfig
    from portal.metering.services import ImportReport

# The heavy imports are in the commands' bodies: ``portal --help`` and this group's help start fast (portal/cli.py).


@click.group()
def usage() -> None:
    """Usage metering."""


#: ``portal usage import-sacct``'s exit status when some lines were refused (unreadable, another cluster's) and
#: the rest were charged; 1 when the import failed (no line could be read, or the file not at all), 2 for a usage
#: error, 0 when every line was read.
SOME_LINES_REFUSED = 3


@dataclass(frozen=True)
class AllocationCharged:
    """One allocation's share of an import: what it was charged and what it has left, in its base unit."""

    allocation_id: int
    project_id: int
    resource: str
    kind: str
    base_unit: str
    charged: int
    balance: int


def charged_allocations(report: ImportReport) -> list[AllocationCharged]:
    """The allocations the import charged, by id, read in one query."""
    from sqlmodel import col, select

    from portal.db import get_db
    from portal.ledger.models import Allocation, Resource, Site

    if not report.charged_per_allocation:
        return []
    rows = get_db().exec(
        select(Allocation, Resource, Site)
        .join(Resource, Resource.id == Allocation.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .where(col(Allocation.id).in_(list(report.charged_per_allocation)))
        .order_by(Allocation.id)
    )
    return [
        AllocationCharged(
            allocation_id=allocation.id,
            project_id=allocation.project_id,
            resource=f"{site.code}:{resource.code}",
            kind=resource.kind,
            base_unit=resource.base_unit,
            charged=report.charged_per_allocation[allocation.id],
            balance=allocation.balance,
        )
        for allocation, resource, site in rows
    ]


def print_report(report: ImportReport) -> None:
    from portal.formatting import quantity

    click.echo(
        f"{report.lines} lines read: {report.charged} jobs charged, {report.already_charged} already charged before"
    )
    for reason, count in sorted(report.skipped.items()):
        click.echo(f"  skipped {count}: {reason}")
    charged = charged_allocations(report)
    if charged:
        header = ("allocation", "project", "resource", "charged", "balance now")
        rows = [
            (
                str(c.allocation_id),
                str(c.project_id),
                c.resource,
                quantity(c.charged, c.kind),
                quantity(c.balance, c.kind),
            )
            for c in charged
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            click.echo(
                "  ".join(
                    cell.rjust(w) if i in (0, 1, 3, 4) else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
    for problem in report.problems:
        click.echo(f"line {problem.line_number}: {problem.reason}: {problem.line}", err=True)


def import_status(report: ImportReport) -> int:
    """0: every line read; ``SOME_LINES_REFUSED``: some refused, the rest charged; 1: no line could be read."""
    if not report.problems:
        return 0
    read_some = report.charged or report.already_charged or report.skipped
    return SOME_LINES_REFUSED if read_some else 1


def report_json(report: ImportReport) -> dict[str, object]:
    """The import as ``--json`` prints it: quantities in base units (GPU-seconds, core-seconds)."""
    return {
        "lines": report.lines,
        "charged_jobs": report.charged,
        "already_charged_jobs": report.already_charged,
        "skipped": dict(sorted(report.skipped.items())),
        "refused": [{"line": p.line_number, "reason": p.reason, "text": p.line} for p in report.problems],
        "allocations": [asdict(c) for c in charged_allocations(report)],
        "exit_status": import_status(report),
    }


@usage.command("import-sacct")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--cluster", required=True, help="The Slurm cluster the file comes from (its ClusterName).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document (base units).")
@with_appcontext
def import_sacct_command(file: Path, cluster: str, as_json: bool) -> None:
    """Charge the finished jobs in FILE (sacct output; "-" reads standard input).

    Make FILE with (one command; --state makes sacct select jobs by their end time):

    \b
    TZ=UTC sacct --parsable2 --noheader --allusers -X
      --state=CA,CD,DL,F,NF,BF,OOM,PR,TO
      --format=JobID,JobIDRaw,Cluster,Account,User,Partition,AllocTRES,ElapsedRaw,Start,End,State
      --starttime ... --endtime ...

    Prints what it charged per allocation. Importing the same jobs again
    changes nothing. Lines that are refused (unreadable, another cluster's)
    are reported with their numbers on stderr; the rest are charged all the same.

    \b
    Exit status:
      0  every line was read (and each finished job charged once)
      3  some lines were refused, the rest charged
      1  the import failed: no line could be read
      2  usage error (a missing option, no such FILE)
    """
    from portal.db import get_db
    from portal.metering.services import import_sacct

    stream = sys.stdin if str(file) == "-" else file.open(encoding="utf-8", errors="replace")
    try:
        report = import_sacct(get_db(), stream, cluster=cluster)
    finally:
        if stream is not sys.stdin:
            stream.close()
    status = import_status(report)
    if as_json:
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        print_report(report)
    if status == 1:
        raise click.ClickException(f"none of the {len(report.problems)} lines could be read (listed above)")
    if status == SOME_LINES_REFUSED:
        click.echo(f"{len(report.problems)} lines refused (listed above); the rest are charged", err=True)
        click.get_current_context().exit(SOME_LINES_REFUSED)


def _cluster(name: str) -> SlurmClusterConfig:
    cluster = current_app.extensions["portal.settings"].slurm_cluster(name)
    if cluster is None:
        raise click.ClickException(f"Slurm cluster '{name}' is not configured (PORTAL_SLURM_CLUSTERS).")
    return cluster


@usage.command("pull-sacct")
@click.option("--cluster", "cluster_name", required=True, help="A configured Slurm cluster (PORTAL_SLURM_CLUSTERS).")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="Read from this UTC time instead of from the last pull (to catch up after an outage).",
)
@with_appcontext
def pull_sacct_command(cluster_name: str, since: datetime | None) -> None:
    """Run sacct for the window since the last pull and charge the finished jobs, each once.

    What ``portal worker`` does every few minutes for every configured cluster. Unreadable lines are
    reported (exit status 1); the window is recorded all the same.
    """
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.metering.slurm import pull_sacct

    if since is not None and since.replace(tzinfo=UTC) > datetime.now(UTC):
        raise click.ClickException(f"--since {since:%Y-%m-%dT%H:%M:%S} is in the future; give a past UTC time")
    try:
        report = pull_sacct(get_db(), _cluster(cluster_name), since=since.replace(tzinfo=UTC) if since else None)
    except DomainError as exc:
        raise refusal(exc) from exc
    if report.locked_out:
        click.echo(f"{cluster_name}: another worker is pulling this cluster now; nothing done")
        return
    if report.window is None or report.imported is None:
        click.echo(f"{cluster_name}: {report.note}")
        return
    start, end = report.window
    click.echo(f"{cluster_name}: sacct from {start:%Y-%m-%dT%H:%M:%S} to {end:%Y-%m-%dT%H:%M:%S} UTC")
    print_report(report.imported)
    if report.imported.problems:
        raise click.ClickException(f"{len(report.imported.problems)} lines could not be read (listed above)")


@click.group()
def slurm() -> None:
    """Slurm accounts, users and limits of the configured clusters."""


@slurm.command("sync")
@click.option("--cluster", "cluster_name", required=True, help="A configured Slurm cluster (PORTAL_SLURM_CLUSTERS).")
@click.option("--dry-run", is_flag=True, help="Print the sacctmgr commands instead of running them; change nothing.")
@with_appcontext
def sync_command(cluster_name: str, dry_run: bool) -> None:
    """Bring the cluster's Slurm accounts, users and GrpTRESMins limits in line with the allocations.

    One account per allocation at the cluster's site (<site>-<allocation id>), the project's members
    with a login on the cluster as its users, and a limit of the minutes the allocation may still use
    (0 holds exhausted, expired, suspended and pending allocations). Only what differs is changed.
    """
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.metering.slurm import sync_cluster

    try:
        report = sync_cluster(get_db(), _cluster(cluster_name), dry_run=dry_run)
    except DomainError as exc:
        raise refusal(exc) from exc
    if report.locked_out:
        click.echo(f"{cluster_name}: another worker is syncing this cluster now; nothing done")
        return
    for command in report.commands:
        click.echo(shlex.join(command))
    if report.commands:
        summary = f"{len(report.commands)} sacctmgr commands {'to run (dry run)' if dry_run else 'run'}"
    else:
        summary = "nothing to change"
    click.echo(f"{cluster_name}: {report.accounts} accounts ({report.held} held); {summary}")
    for problem in report.problems:
        click.echo(problem, err=True)
    if report.problems:
        raise click.ClickException(f"{len(report.problems)} changes failed (listed above)")


@slurm.command("set-username")
@click.option("--cluster", "cluster_name", required=True, help="A configured Slurm cluster (PORTAL_SLURM_CLUSTERS).")
@click.argument("email")
@click.argument("username")
@reason_option
@with_appcontext
def set_username_command(cluster_name: str, email: str, username: str, reason: str) -> None:
    """Record that the user with EMAIL logs in to the cluster as USERNAME (the next sync adds them)."""
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.identity.services import find_user_by_email
    from portal.metering.slurm import set_slurm_username

    _cluster(cluster_name)
    try:
        user = find_user_by_email(get_db(), email)
        row = set_slurm_username(get_db(), None, cluster=cluster_name, user=user, username=username, reason=reason)
    except DomainError as exc:
        raise click.ClickException(" ".join([exc.detail, *exc.errors.values()])) from exc
    click.echo(f"{user.display_name} <{user.email}> is {row.username} on {cluster_name}")


@slurm.command("map")
@click.option("--cluster", "cluster_name", required=True, help="A configured Slurm cluster (PORTAL_SLURM_CLUSTERS).")
@click.option("--account", required=True, help="An existing Slurm account on the cluster.")
@click.option("--allocation", "allocation_id", required=True, type=int, help="The allocation it draws from.")
@reason_option
@with_appcontext
def map_command(cluster_name: str, account: str, allocation_id: int, reason: str) -> None:
    """Let an existing Slurm account (not created by the sync) draw from an allocation."""
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.metering.services import map_slurm_account

    site = _cluster(cluster_name).site
    try:
        mapping = map_slurm_account(
            get_db(),
            None,
            cluster=cluster_name,
            account=account,
            allocation_id=allocation_id,
            reason=reason,
            site=site,
        )
    except DomainError as exc:
        raise click.ClickException(" ".join([exc.detail, *exc.errors.values()])) from exc
    click.echo(f"{mapping.account} on {cluster_name} now draws from allocation {mapping.allocation_id}")
