"""``portal usage ...``: charging usage from Slurm accounting."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask.cli import with_appcontext

from portal.db import get_db
from portal.metering.services import ImportReport, import_sacct


@click.group()
def usage() -> None:
    """Usage metering."""


def print_report(report: ImportReport) -> None:
    click.echo(
        f"{report.lines} lines read: {report.charged} jobs charged, {report.already_charged} already charged before"
    )
    for reason, count in sorted(report.skipped.items()):
        click.echo(f"  skipped {count}: {reason}")
    for problem in report.problems:
        click.echo(f"line {problem.line_number}: {problem.reason}: {problem.line}", err=True)


@usage.command("import-sacct")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--cluster", required=True, help="The Slurm cluster the file comes from (its ClusterName).")
@with_appcontext
def import_sacct_command(file: Path, cluster: str) -> None:
    """Charge the finished jobs in FILE (sacct output; "-" reads standard input).

    Make FILE with: TZ=UTC sacct --parsable2 --noheader --allusers
    --format=JobID,JobIDRaw,Cluster,Account,User,Partition,AllocTRES,ElapsedRaw,Start,End,State
    --starttime ... --endtime ...  Importing the same jobs again changes nothing. Unreadable lines are
    reported with their numbers (exit status 1); the readable ones are charged all the same.
    """
    stream = sys.stdin if str(file) == "-" else file.open(encoding="utf-8", errors="replace")
    try:
        report = import_sacct(get_db(), stream, cluster=cluster)
    finally:
        if stream is not sys.stdin:
            stream.close()
    print_report(report)
    if report.problems:
        raise click.ClickException(f"{len(report.problems)} lines could not be read (listed above)")
