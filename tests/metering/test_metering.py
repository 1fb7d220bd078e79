"""Charging Slurm usage from sacct output: each finished job exactly once, as a site operator expects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlmodel import select

from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationSource, EntryKind, LedgerEntry, Resource, ResourceKind, Site
from portal.metering.models import SlurmAccount, UsageRecord
from portal.metering.services import import_sacct, map_slurm_account
from tests.conftest import portal_cli, portal_cli_in_process
from tests.ledger_world import HOUR, Q1, at, make_world, open_q1

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sacct-factory.txt"
GPU_SECONDS = 2 * 3600 + 1800 + 600 + 120 + 180 + 300 + 1000 + 60 + 60


@pytest.fixture
def accounts(db):
    world = make_world(db)
    cpu = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    ledger.set_capacity(db, None, cpu, starts_on=Q1[0], ends_on=Q1[1], capacity=100_000 * HOUR, reason="test setup")
    gpu_allocation = open_q1(db, world, 100)
    cpu_allocation = ledger.open_allocation(
        db,
        None,
        project=world.project,
        resource=cpu,
        amount=1000 * HOUR,
        starts_at=at(2030, 1, 1),
        ends_at=at(2030, 4, 1),
        source=AllocationSource.AWARD,
        title="CPU",
    )
    map_slurm_account(
        db, None, cluster="factory", account="P1-GPU", allocation_id=gpu_allocation.id, reason="test setup"
    )
    map_slurm_account(
        db, None, cluster="factory", account="p1-cpu", allocation_id=cpu_allocation.id, reason="test setup"
    )
    return gpu_allocation, cpu_allocation


def test_each_finished_job_is_charged_by_gpus_times_elapsed_seconds(db, accounts):
    gpu_allocation, cpu_allocation = accounts
    with FIXTURE.open() as lines:
        report = import_sacct(db, lines, cluster="factory")
    assert report.charged == 10
    assert report.charged_per_allocation == {gpu_allocation.id: GPU_SECONDS, cpu_allocation.id: 32 * 3600}
    db.refresh(gpu_allocation)
    assert gpu_allocation.used == GPU_SECONDS
    assert gpu_allocation.balance == 100 * HOUR - GPU_SECONDS
    records = {r.external_id: r for r in db.exec(select(UsageRecord)).all()}
    # array tasks and heterogeneous components are charged under their own JobIDRaw
    assert {"1007", "1008", "1009"} <= set(records)
    assert records["1001"].quantity == 7200 and records["1001"].username == "anna"
    assert records["1002"].quantity == 1800  # gres/gpu:h100=1 counts as one GPU


def test_steps_unfinished_and_site_failures_are_not_charged(db, accounts):
    with FIXTURE.open() as lines:
        report = import_sacct(db, lines, cluster="factory")
    assert report.skipped == {
        "job step (the job itself is charged)": 3,
        "not finished (RUNNING); charged once it ends": 1,
        "not finished (PENDING); charged once it ends": 1,
        "never ran": 1,
        "NODE_FAIL: a failure of the site, not charged": 1,
        "no GPUs allocated for a gpu allocation": 1,
        "account 'unknown-acct' is not mapped to an allocation": 1,
    }
    charged_ids = set(db.exec(select(UsageRecord.external_id)).all())
    assert not charged_ids & {"1004", "1005", "1006", "1010", "1011", "1014"}


def test_unreadable_lines_are_reported_by_number_and_the_rest_is_committed(db, accounts):
    with FIXTURE.open() as lines:
        report = import_sacct(db, lines, cluster="factory")
    assert [(p.line_number, p.reason) for p in report.problems] == [
        (
            18,
            "expected 11 fields (JobID,JobIDRaw,Cluster,Account,User,Partition,AllocTRES,ElapsedRaw,Start,End,"
            "State), found 1",
        ),
        (19, "ElapsedRaw 'ten' is not a number of seconds"),
    ]
    assert len(db.exec(select(UsageRecord)).all()) == 10


def test_importing_the_same_file_twice_changes_nothing(db, accounts):
    gpu_allocation, _ = accounts
    with FIXTURE.open() as lines:
        first = import_sacct(db, lines, cluster="factory")
    with FIXTURE.open() as lines:
        second = import_sacct(db, lines, cluster="factory")
    assert (first.charged, first.already_charged) == (10, 1)  # job 1017 appears twice in the file
    assert (second.charged, second.already_charged) == (0, 11)
    db.refresh(gpu_allocation)
    assert gpu_allocation.used == GPU_SECONDS
    usage_entries = db.exec(select(LedgerEntry).where(LedgerEntry.kind == EntryKind.USAGE)).all()
    assert len(usage_entries) == 10
    assert ledger.balance_mismatches(db) == []


def test_a_running_job_is_charged_by_the_import_after_it_ends(db, accounts, tmp_path):
    gpu_allocation, _ = accounts
    running = "2001|2001|factory|p1-gpu|anna|gpu|cpu=4,gres/gpu=4|600|2030-02-01T08:00:00|Unknown|RUNNING\n"
    ended = "2001|2001|factory|p1-gpu|anna|gpu|cpu=4,gres/gpu=4|900|2030-02-01T08:00:00|2030-02-01T08:15:00|COMPLETED\n"
    assert import_sacct(db, [running], cluster="factory").charged == 0
    assert import_sacct(db, [ended], cluster="factory").charged == 1
    db.refresh(gpu_allocation)
    assert gpu_allocation.used == 4 * 900


def test_usage_that_overdraws_is_recorded_in_full_and_exhausts(db, accounts):
    gpu_allocation, _ = accounts
    line = (
        "3001|3001|factory|p1-gpu|anna|gpu|cpu=64,gres/gpu=8|86400|2030-02-01T00:00:00|2030-02-02T00:00:00|COMPLETED\n"
    )
    import_sacct(db, [line], cluster="factory")
    fresh = db.get(Allocation, gpu_allocation.id)
    db.refresh(fresh)
    assert fresh.used == 8 * 86400
    assert fresh.balance == 100 * HOUR - 8 * 86400
    assert fresh.state == "exhausted"


def test_lines_of_another_cluster_are_refused(db, accounts):
    line = "4001|4001|other|p1-gpu|anna|gpu|cpu=4,gres/gpu=1|60|2030-02-01T08:00:00|2030-02-01T08:01:00|COMPLETED\n"
    report = import_sacct(db, [line], cluster="factory")
    assert report.charged == 0
    assert report.problems[0].reason == "belongs to cluster 'other', not 'factory'"


def test_the_command_reports_problems_on_stderr_and_exits_non_zero(accounts, app):
    result = portal_cli_in_process(app, "usage", "import-sacct", str(FIXTURE), "--cluster", "factory")
    assert result.returncode == 3
    assert "22 lines read: 10 jobs charged, 1 already charged before" in result.stdout
    assert "line 18:" in result.stderr and "line 19: ElapsedRaw 'ten' is not a number of seconds" in result.stderr
    again = portal_cli_in_process(app, "usage", "import-sacct", str(FIXTURE), "--cluster", "factory")
    assert "0 jobs charged, 11 already charged before" in again.stdout


def test_an_existing_slurm_account_is_mapped_from_the_command_line(app, db):
    from tests.ledger_world import make_world, open_q1

    world = make_world(db)
    allocation = open_q1(db, world, 10)
    clusters = f'[{{"name": "factory", "site": "{world.site.code}"}}]'

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return portal_cli(
            app,
            "slurm",
            "map",
            "--cluster",
            "factory",
            *args,
            "--reason",
            "legacy account",
            PORTAL_SLURM_CLUSTERS=clusters,
        )

    done = run("--account", "Legacy-GPU", "--allocation", str(allocation.id))
    assert done.returncode == 0, done.stderr
    assert f"legacy-gpu on factory now draws from allocation {allocation.id}" in done.stdout
    line = (
        "9001|9001|factory|legacy-gpu|anna|gpu|cpu=4,gres/gpu=1|60|2030-02-01T08:00:00|2030-02-01T08:01:00|COMPLETED\n"
    )
    assert import_sacct(db, [line], cluster="factory").charged == 1
    missing = run("--account", "other", "--allocation", "424242")
    assert missing.returncode == 1 and "No such allocation" in missing.stderr


def test_slurm_map_refuses_a_storage_allocation_and_one_at_another_site(app, db):
    world = make_world(db)
    storage = ledger.create_resource(
        db, None, world.site, code="lustre", name="Lustre TB-months", kind=ResourceKind.STORAGE, reason="test setup"
    )
    ledger.set_capacity(db, None, storage, starts_on=Q1[0], ends_on=Q1[1], capacity=10_000, reason="test setup")
    disk = ledger.open_allocation(
        db,
        None,
        project=world.project,
        resource=storage,
        amount=100,
        starts_at=at(2030, 1, 1),
        ends_at=at(2030, 4, 1),
        source=AllocationSource.AWARD,
        title="Disk",
    )
    elsewhere = open_q1(db, make_world(db), 10)
    clusters = f'[{{"name": "factory", "site": "{world.site.code}"}}]'

    def run(allocation_id: int) -> subprocess.CompletedProcess[str]:
        return portal_cli(app, "slurm", "map", "--cluster", "factory", "--account", "legacy",
                          "--allocation", str(allocation_id), "--reason", "legacy account",
                          PORTAL_SLURM_CLUSTERS=clusters)  # fmt: skip

    refused = run(disk.id)
    assert refused.returncode == 1
    assert "only from a CPU or GPU allocation" in refused.stderr
    foreign = run(elsewhere.id)
    assert foreign.returncode == 1
    assert f"is at site {db.get(Site, db.get(Resource, elsewhere.resource_id).site_id).code}" in foreign.stderr
    assert f"runs the allocations of site {world.site.code}" in foreign.stderr
    assert db.exec(select(SlurmAccount)).all() == []
    # a storage job charged as GB-days never happens: nothing maps, nothing is charged
    line = "9101|9101|factory|legacy|anna|gpu|cpu=4,gres/gpu=1|60|2030-02-01T08:00:00|2030-02-01T08:01:00|COMPLETED\n"
    assert import_sacct(db, [line], cluster="factory").charged == 0


def test_a_job_that_ended_before_its_allocation_started_is_not_charged_to_it(db, accounts):
    gpu_allocation, _cpu = accounts  # from 2030-01-01
    before = "9201|9201|factory|p1-gpu|anna|gpu|gres/gpu=2|3600|2029-12-31T20:00:00|2029-12-31T21:00:00|COMPLETED\n"
    across = "9202|9202|factory|p1-gpu|anna|gpu|gres/gpu=2|7200|2029-12-31T23:00:00|2030-01-01T01:00:00|COMPLETED\n"
    report = import_sacct(db, [before, across], cluster="factory")
    assert (report.charged, report.skipped) == (1, {"ended before its allocation started": 1})
    db.refresh(gpu_allocation)
    assert gpu_allocation.used == 2 * 7200  # the job that ran into the allocation's time, in full
    records = db.exec(select(UsageRecord).where(UsageRecord.allocation_id == gpu_allocation.id)).all()
    assert [r.external_id for r in records] == ["9202"]
