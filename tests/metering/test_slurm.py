"""Slurm for real: ``portal slurm sync`` makes accounts, users and limits; real jobs are pulled with sacct and
charged once; an exhausted allocation's account is held and released when hours are added.

One Slurm cluster (``portal_standin.devstack_slurm.SlurmCluster``: munged, slurmdbd on the local MariaDB,
slurmctld, slurmd with 2 fake GPUs) serves the whole file, so the file runs in one pytest-xdist worker
(``--dist loadfile`` as in ``scripts/test``, or the ``xdist_group`` with ``--dist loadgroup``). Each test
has its own site, so its accounts (``<site>-<allocation id>``) are its own on the shared cluster.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from portal_standin.devstack import patience
from portal_standin.devstack_slurm import SlurmCluster
from sqlmodel import Session, select

from portal.config import SlurmClusterConfig
from portal.db import utcnow
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, EntryKind, Resource, ResourceKind, Site
from portal.metering.models import SlurmAccount, SlurmPull, UsageRecord
from portal.metering.sacct import SACCT_FORMAT
from portal.metering.slurm import (
    ENDED_STATES,
    account_name,
    cluster_lock,
    pull_sacct,
    set_slurm_username,
    sync_cluster,
)
from portal.migrations import upgrade
from portal.projects import services as projects
from portal.projects.models import Project
from portal.worker import run_due_jobs
from tests.conftest import portal_cli
from tests.factories import open_now
from tests.ledger_world import HOUR, admin, person

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

CLUSTER = "factory"
PORTAL = str(Path(sys.executable).parent / "portal")


@pytest.fixture
def site_code() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(make_settings, slurm_cluster: SlurmCluster, site_code: str):
    """The suite's settings plus the cluster, at this test's own site."""
    return make_settings(
        slurm_clusters=[{"name": CLUSTER, "site": site_code, "slurm_conf": str(slurm_cluster.conf)}],
        log_level="WARNING",
    )


@dataclass
class World:
    config: SlurmClusterConfig
    site: Site
    gpu: Resource
    cpu: Resource
    pi: User
    member: User
    project: Project
    gpu_allocation: Allocation
    cpu_allocation: Allocation

    @property
    def gpu_account(self) -> str:
        return account_name(self.site, self.gpu_allocation)

    @property
    def cpu_account(self) -> str:
        return account_name(self.site, self.cpu_allocation)


@pytest.fixture
def world(db: Session, app, site_code: str) -> World:
    """A site with H100 and CPU resources, a project (PI and one member) with 10 GPU-hours and 100 core-hours
    running from yesterday for 30 days."""
    settings = app.extensions["portal.settings"]
    site = ledger.create_site(
        db, None, code=site_code, name="Test Centre", city="Riga", country="LV", reason="test setup"
    )
    gpu = ledger.create_resource(
        db, None, site, code="h100", name="H100", kind=ResourceKind.GPU, gpu_model="H100", reason="test setup"
    )
    cpu = ledger.create_resource(db, None, site, code="cpu", name="CPU", kind=ResourceKind.CPU, reason="test setup")
    now = utcnow()
    this_quarter = ledger.quarter_of(now.date())
    next_quarter = ledger.quarter_of(this_quarter[1])
    for resource in (gpu, cpu):
        for starts_on, ends_on in (this_quarter, next_quarter):
            ledger.set_capacity(
                db, None, resource, starts_on=starts_on, ends_on=ends_on, capacity=10**9, reason="test setup"
            )
    pi = person(db, "Pi")
    member = person(db, "Anna")
    org = projects.create_organisation(db, pi, name="Uni", kind="university", country="LV")
    project = projects.create_project(db, pi, org, title="Vision")
    _invitation, link = projects.invite_member(db, settings, pi, project, email=member.email, role="member")
    projects.accept_invitation(db, member, link.rsplit("/", 1)[-1])

    gpu_allocation, cpu_allocation = open_now(db, project, gpu, 10), open_now(db, project, cpu, 100)
    assert gpu_allocation.state == "active"
    config = settings.slurm_cluster(CLUSTER)
    return World(config, site, gpu, cpu, pi, member, project, gpu_allocation, cpu_allocation)


def associations(cluster: SlurmCluster) -> dict[str, dict[str, str]]:
    """Account -> {"": its GrpTRESMins, user: ""...} as sacctmgr shows them."""
    out = cluster.run("sacctmgr", "-n", "-P", "show", "assoc", f"cluster={CLUSTER}", "format=Account,User,GrpTRESMins")
    table: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        account, user, limits = line.split("|")
        table.setdefault(account, {})[user] = limits
    return table


def wait_for(what: str, check, timeout: float = 30.0):
    """Poll ``check`` until it is true: ``timeout`` seconds on an idle machine, more on a busy one."""
    timeout = patience(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def sbatch(cluster: SlurmCluster, account: str, *options: str) -> str:
    return cluster.run("sbatch", "--parsable", "-A", account, *options, "--wrap", "sleep 2").stdout.strip()


def finished_jobs(cluster: SlurmCluster, *job_ids: str) -> dict[str, list[str]]:
    """JobIDRaw -> sacct fields of the jobs, once every one has ended and been recorded."""

    def check() -> dict[str, list[str]] | None:
        out = cluster.run(
            "sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), f"--format={SACCT_FORMAT}"
        ).stdout.splitlines()
        rows = {line.split("|")[1]: line.split("|") for line in out}
        done = all(j in rows and rows[j][10] == "COMPLETED" and rows[j][9] != "Unknown" for j in job_ids)
        return rows if done else None

    return wait_for(f"jobs {job_ids} completed in sacct", check, timeout=60)


def pending_reason(cluster: SlurmCluster, job_id: str) -> str:
    return cluster.run("squeue", "-h", "-j", job_id, "-o", "%T %r", check=False).stdout.strip()


def test_sync_creates_accounts_users_and_limits_and_a_second_run_changes_nothing(app, db, world, slurm_cluster):
    set_pi = portal_cli(
        app, "slurm", "set-username", "--cluster", CLUSTER, world.pi.email, "root", "--reason", "PI's cluster login"
    )
    assert set_pi.returncode == 0, set_pi.stderr
    assert f"is root on {CLUSTER}" in set_pi.stdout
    set_slurm_username(
        db, None, cluster=CLUSTER, user=world.member, username="Anna", reason="test setup"
    )  # stored lower case

    first = portal_cli(app, "slurm", "sync", "--cluster", CLUSTER)
    assert first.returncode == 0, first.stderr
    assert f"sacctmgr -i add account name={world.gpu_account} cluster={CLUSTER}" in first.stdout
    slurm = associations(slurm_cluster)
    # 10 GPU-hours = 600 GPU-minutes; 100 core-hours = 6000 core-minutes; both members in both accounts
    assert slurm[world.gpu_account] == {"": "gres/gpu=600", "anna": "", "root": ""}
    assert slurm[world.cpu_account] == {"": "cpu=6000", "anna": "", "root": ""}
    mapped = {m.account: m.allocation_id for m in db.exec(select(SlurmAccount)).all()}
    assert mapped == {world.gpu_account: world.gpu_allocation.id, world.cpu_account: world.cpu_allocation.id}

    second = sync_cluster(db, world.config)
    assert second.commands == [] and second.problems == []
    again = portal_cli(app, "slurm", "sync", "--cluster", CLUSTER)
    assert again.returncode == 0 and "nothing to change" in again.stdout
    assert "sacctmgr" not in again.stdout

    # a member who leaves the project leaves its accounts (her default account moves first)
    projects.remove_member(db, world.pi, world.project, world.member.id)
    removal = sync_cluster(db, world.config)
    assert [c[2:4] for c in removal.commands] == [["modify", "user"], ["remove", "user"], ["remove", "user"]]
    slurm = associations(slurm_cluster)
    assert "anna" not in slurm[world.gpu_account] and "anna" not in slurm[world.cpu_account]
    assert sync_cluster(db, world.config).commands == []


def test_real_jobs_are_charged_exactly_once_by_pull_sacct_and_import_sacct(app, db, world, slurm_cluster, tmp_path):
    set_slurm_username(db, None, cluster=CLUSTER, user=world.pi, username="root", reason="test setup")
    assert sync_cluster(db, world.config).problems == []
    started = utcnow() - timedelta(minutes=1)
    gpu_job = sbatch(slurm_cluster, world.gpu_account, "--gres=gpu:2")
    cpu_job = sbatch(slurm_cluster, world.cpu_account, "-c", "1")
    jobs = finished_jobs(slurm_cluster, gpu_job, cpu_job)

    pulled = portal_cli(app, "usage", "pull-sacct", "--cluster", CLUSTER)
    assert pulled.returncode == 0, pulled.stderr
    assert "2 jobs charged" in pulled.stdout

    gpu_elapsed, cpu_elapsed = int(jobs[gpu_job][7]), int(jobs[cpu_job][7])
    assert gpu_elapsed >= 2 and "gres/gpu=2" in jobs[gpu_job][6]
    cores = int(dict(p.split("=") for p in jobs[cpu_job][6].split(","))["cpu"])
    db.expire_all()
    gpu_allocation = db.get(Allocation, world.gpu_allocation.id)
    cpu_allocation = db.get(Allocation, world.cpu_allocation.id)
    assert gpu_allocation.used == 2 * gpu_elapsed  # GPUs × elapsed seconds
    assert cpu_allocation.used == cores * cpu_elapsed
    assert gpu_allocation.balance == 10 * HOUR - 2 * gpu_elapsed
    records = {r.external_id: r for r in db.exec(select(UsageRecord)).all()}
    assert set(records) == {gpu_job, cpu_job}
    assert records[gpu_job].username == "root" and records[gpu_job].origin == CLUSTER
    pull = db.get(SlurmPull, CLUSTER)
    assert pull is not None and pull.pulled_until >= started

    # the operator's own dump of the same jobs (steps included) charges nothing more
    dump = tmp_path / "sacct.txt"
    dump.write_text(
        slurm_cluster.run(
            "sacct",
            "--parsable2",
            "--noheader",
            "--allusers",
            f"--format={SACCT_FORMAT}",
            f"--state={','.join(ENDED_STATES)}",
            f"--starttime={started:%Y-%m-%dT%H:%M:%S}",
            "--endtime=now",
        ).stdout
    )
    assert f"{gpu_job}.batch|" in dump.read_text()
    imported = portal_cli(app, "usage", "import-sacct", str(dump), "--cluster", CLUSTER)
    assert imported.returncode == 0, imported.stderr
    assert "0 jobs charged, 2 already charged before" in imported.stdout

    # the worker's round: another pull charges nothing, and the limit has not moved (charged + balance)
    results = run_due_jobs(app.extensions["portal.engine"], app.extensions["portal.settings"], {}, time.monotonic())
    assert results["pull_slurm_usage"] == 0
    assert results["sync_slurm_accounts"] == 0
    assert associations(slurm_cluster)[world.gpu_account][""] == "gres/gpu=600"
    db.expire_all()
    assert db.get(Allocation, world.gpu_allocation.id).used == 2 * gpu_elapsed
    assert ledger.balance_mismatches(db) == []


def test_an_exhausted_allocation_is_held_and_released_when_hours_are_added(app, db, world, slurm_cluster):
    set_slurm_username(db, None, cluster=CLUSTER, user=world.pi, username="root", reason="test setup")
    sync_cluster(db, world.config)
    allocation_id = world.gpu_allocation.id
    ledger.charge_usage(db, allocation_id, 10 * HOUR, idempotency_key=f"elsewhere-{uuid.uuid4()}")
    assert db.get(Allocation, allocation_id).state == "exhausted"
    # the enforcement hook held the account the moment the allocation ran out, before any sync
    assert associations(slurm_cluster)[world.gpu_account][""] == "gres/gpu=0"

    held = sync_cluster(db, world.config)
    assert held.commands == [] and held.held == 1  # the sync agrees: nothing left to change
    job = sbatch(slurm_cluster, world.gpu_account, "--gres=gpu:1")
    assert wait_for("job held", lambda: pending_reason(slurm_cluster, job) == "PENDING AssocGrpGRESMinutes")

    ledger.credit(db, None, allocation_id, HOUR, kind=EntryKind.PURCHASE, reason="one more hour")
    assert db.get(Allocation, allocation_id).state == "active"
    released = sync_cluster(db, world.config)
    assert [c[2:4] for c in released.commands] == [["modify", "account"]] and released.held == 0
    assert associations(slurm_cluster)[world.gpu_account][""] == "gres/gpu=60"
    wait_for("held job started", lambda: not pending_reason(slurm_cluster, job).startswith("PENDING"))


def test_dry_run_prints_the_commands_and_changes_nothing(app, db, world, slurm_cluster):
    before = associations(slurm_cluster)
    dry = portal_cli(app, "slurm", "sync", "--cluster", CLUSTER, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"sacctmgr -i add account name={world.gpu_account} cluster={CLUSTER}" in dry.stdout
    assert "GrpTRESMins=gres/gpu=600" in dry.stdout and "(dry run)" in dry.stdout
    assert associations(slurm_cluster) == before
    assert db.exec(select(SlurmAccount)).all() == []

    sync_cluster(db, world.config)
    ledger.set_suspended(db, admin(db), world.cpu_allocation.id, True, reason="unpaid invoice")
    dry = sync_cluster(db, world.config, dry_run=True)
    assert [c[2:] for c in dry.commands] == [
        ["modify", "account", "where", f"name={world.cpu_account}", f"cluster={CLUSTER}", "set", "GrpTRESMins=cpu=0"]
    ]
    assert associations(slurm_cluster)[world.cpu_account][""] == "cpu=6000"


def test_an_unknown_cluster_or_user_is_refused_on_stderr(app, world):
    unknown = portal_cli(app, "slurm", "sync", "--cluster", "nowhere")
    assert unknown.returncode == 1 and "'nowhere' is not configured" in unknown.stderr
    bad = portal_cli(
        app, "slurm", "set-username", "--cluster", CLUSTER, world.pi.email, "Not A Login", "--reason", "typo"
    )
    assert bad.returncode == 1 and "A cluster login is" in bad.stderr


@pytest.mark.postgres
def test_a_pull_or_sync_is_skipped_while_another_worker_does_it(postgres_url, slurm_cluster):
    upgrade(postgres_url)
    engine = sa.create_engine(postgres_url)
    config = SlurmClusterConfig(name=CLUSTER, site="nowhere", slurm_conf=str(slurm_cluster.conf))
    try:
        with Session(engine) as worker_a, Session(engine) as worker_b:
            with cluster_lock(worker_a, "pull", CLUSTER) as got:
                assert got
                assert pull_sacct(worker_b, config).locked_out
                with cluster_lock(worker_b, "pull", CLUSTER) as second:
                    assert not second
            with cluster_lock(worker_a, "sync", CLUSTER):
                assert sync_cluster(worker_b, config).locked_out
            report = pull_sacct(worker_b, config)
            assert not report.locked_out
            assert report.note.startswith("no Slurm account is mapped")
    finally:
        engine.dispose()


def gone(pid: int) -> bool:
    """No such process, or only a zombie left for its parent to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def test_the_cluster_restarts_on_its_folder_with_its_state_and_leaves_nothing_running(slurm_cluster):
    before = associations(slurm_cluster)
    daemons = [process.pid for process in slurm_cluster.processes.values()]
    assert len(daemons) == 4
    slurm_cluster.stop()
    assert all(gone(pid) for pid in daemons)
    assert slurm_cluster._our_pids() == set()
    started = time.monotonic()
    slurm_cluster.start()
    assert time.monotonic() - started < 15
    assert associations(slurm_cluster) == before
