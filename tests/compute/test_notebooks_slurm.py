"""Notebooks on the factory cluster: a real JupyterHub whose servers are Slurm jobs (FactorySlurmSpawner, on the
test Slurm with accounting) with Dask Gateway as its service, the portal served over HTTP deciding each job and
each Dask cluster, and charging from sacct only.

What a user would notice: the notebook starts as a job under its allocation's account with the profile's
cores/GPUs and the hours chosen as its time limit; its kernel computes on a Dask cluster whose scheduler and
two workers are Slurm jobs of the same account; everything is charged once (what sacct reports, never also by
the hub's metering); the Dask jobs end with the notebook; an exhausted allocation stops it at once; a spawn
the cluster cannot serve is refused saying why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, col, select

pytest.importorskip("jupyterhub", reason="needs the [hub] extra")
pytest.importorskip("batchspawner", reason="needs batchspawner (the [hub] extra)")

from portal_standin.devhub import HubProcess
from portal_standin.devstack import free_port
from portal_standin.devstack_slurm import SlurmCluster

from portal import create_app
from portal.compute.hub_client import HubClient, ServerStatus
from portal.compute.launch import BY_USER, EXHAUSTED, launch_notebook, meter_notebooks, stop_notebook
from portal.compute.services import SpawnRefused
from portal.config import Settings
from portal.db import utcnow
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationState, LedgerEntry, Resource, ResourceKind, Site
from portal.metering.models import UsageRecord, UsageSource
from portal.metering.slurm import account_name, pull_sacct, sync_cluster
from portal.notebook_models import NotebookSession
from tests.compute.test_hub import SERVICE_TOKEN, run_in_kernel, wait_for
from tests.compute.test_notebooks import served, start_hub
from tests.conftest import need_proxy
from tests.factories import open_now, plan_capacity_around_now
from tests.ledger_world import HOUR

pytestmark = [pytest.mark.hub, pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

CLUSTER = "factory"
#: Small profiles, so that a notebook, a Dask scheduler and workers fit on the test node's 8 CPUs.
PROFILES = [
    {"name": "cpu", "label": "CPU only: 2 cores, 1 GB", "gpus": 0, "cpus": 2, "memory_gb": 1},
    {"name": "1x-h100", "label": "1 × H100, 1 core, 1 GB", "gpus": 1, "gpu_model": "H100", "cpus": 1, "memory_gb": 1},
]


@dataclass
class Factory:
    app: Flask
    settings: Settings
    hub: HubProcess
    client: HubClient
    slurm: SlurmCluster
    site: Site
    cpu: Resource
    gpu: Resource
    pi: User
    #: The PI's browser: logged in to the portal through the real OIDC provider.
    web: FlaskClient

    def db(self) -> Session:
        return Session(self.app.extensions["portal.engine"], expire_on_commit=False)


@contextmanager
def factory_stack(make_settings, login, slurm: SlurmCluster, state: Path) -> Iterator[Factory]:
    need_proxy()
    hub_url = f"http://127.0.0.1:{free_port()}"
    site_code = f"f{utcnow().strftime('%H%M%S%f')}"[:16]
    settings = make_settings(
        hub_url=hub_url,
        hub_oauth_redirect_uri=f"{hub_url}/hub/oauth_callback",
        hub_api_token=SERVICE_TOKEN,
        slurm_clusters=[
            {
                "name": CLUSTER,
                "site": site_code,
                "slurm_conf": str(slurm.conf),
                "notebook_user": "root",
                "partitions": {"h100": "gpu"},
            }
        ],
        hub_slurm_cluster=CLUSTER,
        notebook_profiles=PROFILES,
        log_level="WARNING",
    )
    app = create_app(settings)
    hub = None
    with served(app) as portal_url:
        try:
            with Session(app.extensions["portal.engine"], expire_on_commit=False) as db:
                site = ledger.create_site(
                    db, None, code=site_code, name="Factory", city="Riga", country="LV", reason="test setup"
                )
                cpu = ledger.create_resource(
                    db, None, site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
                )
                gpu = ledger.create_resource(
                    db,
                    None,
                    site,
                    code="h100",
                    name="H100",
                    kind=ResourceKind.GPU,
                    gpu_model="H100",
                    reason="test setup",
                )
                for resource in (cpu, gpu):
                    plan_capacity_around_now(db, resource, 100_000 * HOUR)
                web = app.test_client()
                pi = login(web, given_name="Pia")
            hub = start_hub(
                settings,
                portal_url,
                state,
                HUB_SPAWNER="slurm",
                PORTAL_HUB_SLURM_CLUSTER=CLUSTER,
                HUB_SLURM_HOME_ROOT=str(state.parent / "homes"),
                HUB_SLURM_SERVER_IP="127.0.0.1",
                SLURM_CONF=str(slurm.conf),
                HUB_DASK_GATEWAY="1",
                HUB_DASK_GATEWAY_PORT=str(free_port()),
                HUB_DASK_GATEWAY_TCP_PORT=str(free_port()),
                HUB_DASK_GATEWAY_SCHEDULER_MEMORY="512 M",
                DASK_KERNEL_GATEWAY_TIMEOUT="300",
            )
            yield Factory(app, settings, hub, HubClient.from_settings(settings), slurm, site, cpu, gpu, pi, web)
        finally:
            if hub is not None:
                hub.stop()
            app.extensions["portal.engine"].dispose()


@pytest.fixture
def factory(make_settings, login, slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[Factory]:
    with factory_stack(make_settings, login, slurm_cluster, tmp_path / "hub") as stack:
        yield stack


def project_with(db: Session, factory: Factory, resource: Resource, hours: int) -> Allocation:
    from portal.projects import services as projects

    org = projects.create_organisation(db, factory.pi, name="Uni", kind="university", country="LV")
    project = projects.create_project(db, factory.pi, org, title="Vision")
    return open_now(db, project, resource, hours)


def queue(slurm: SlurmCluster, name: str) -> dict[str, str]:
    """squeue's view of the job named ``name``: id, state, account, partition, CPUs, TRES."""
    out = slurm.run("squeue", "-h", "--name", name, "-o", "%i|%T|%a|%P|%C|%b").stdout.strip()
    if not out:
        return {}
    job_id, state, account, partition, cpus, gres = out.splitlines()[0].split("|")
    return {"id": job_id, "state": state, "account": account, "partition": partition, "cpus": cpus, "gres": gres}


def ended_in_sacct(slurm: SlurmCluster, job_id: str) -> dict[str, str]:
    """sacct's allocation row of a job once it has ended: state, elapsed seconds, AllocTRES."""

    def check() -> dict[str, str] | None:
        out = slurm.run("sacct", "-X", "-n", "-P", "-j", job_id, "--format=State,ElapsedRaw,AllocTRES,End").stdout
        for line in out.splitlines():
            state, elapsed, tres, end = line.split("|")
            if end not in ("", "Unknown") and not state.startswith(("RUNNING", "PENDING")):
                return {"state": state, "elapsed": elapsed, "tres": tres}
        return None

    return wait_for(check, timeout=90, what=f"job {job_id} to end in sacct")


def kernel_says(factory: Factory, hub_user: str, server_name: str, code: str) -> dict:
    server = factory.client.server(hub_user, server_name)
    assert server is not None
    headers = {"Authorization": f"token {SERVICE_TOKEN}"}
    kernel = requests.post(
        f"{factory.hub.url}{server.url}api/kernels", headers=headers, json={"name": "python3-dask-gpu"}, timeout=60
    )
    assert kernel.status_code == 201, kernel.text
    out = run_in_kernel(factory.hub, server.url, kernel.json()["id"], code, timeout=120)
    return json.loads(out.splitlines()[-1])


def usage_entries(db: Session, allocation: Allocation) -> list[LedgerEntry]:
    db.expire_all()
    return list(
        db.exec(
            select(LedgerEntry).where(LedgerEntry.allocation_id == allocation.id, LedgerEntry.kind == "usage")
        ).all()
    )


def test_a_notebook_runs_as_a_slurm_job_of_its_account_and_is_charged_once_from_sacct(factory: Factory) -> None:
    settings, client, slurm = factory.settings, factory.client, factory.slurm
    config = settings.slurm_cluster(CLUSTER)
    assert config is not None
    with factory.db() as db:
        allocation = project_with(db, factory, factory.cpu, 10)
        account = account_name(factory.site, allocation)
        hub_user = f"u{factory.pi.id}"

        # --- before the sync made its account, the spawn is refused, saying why ------------------------
        with pytest.raises(SpawnRefused, match="has no account on the cluster factory yet"):
            launch_notebook(db, settings, client, factory.pi, allocation_id=allocation.id, profile="cpu", hours=1)
        report = sync_cluster(db, config)
        assert report.problems == []
        assert "root" in slurm.run("sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", "format=User").stdout

        # --- launch while the node is full: the job waits in the queue, and the session page says so ---------
        blocker_account = f"{account}-blocker"  # not the allocation's: the blocker is nobody's usage here
        slurm.sacctmgr("add", "account", blocker_account, f"cluster={CLUSTER}")
        slurm.sacctmgr("add", "user", "root", f"account={blocker_account}")
        blocker = slurm.run(
            "sbatch", "--parsable", "-A", blocker_account, "-c", "8", "--wrap", "sleep 120"
        ).stdout.strip()
        wait_for(lambda: queue(slurm, "wrap").get("state") == "RUNNING", timeout=30, what="the node to be full")
        launch = launch_notebook(db, settings, client, factory.pi, allocation_id=allocation.id, profile="cpu", hours=1)
        session = launch.session
        assert session is not None
        assert (session.slurm_cluster, session.slurm_account) == (CLUSTER, account)
        job_name = f"portal-nb-{session.id}"
        page = factory.web.get(f"/notebooks/{session.id}").get_data(as_text=True)
        queued_job = queue(slurm, job_name)
        assert queued_job["state"] == "PENDING"
        assert '<li aria-current="step" class="current">Queued on the cluster factory' in page
        assert f"job {queued_job['id']}, waiting: Resources" in page
        assert 'class="done">Request accepted' in page and "Open the notebook" not in page
        slurm.run("scancel", blocker)
        wait_for(
            lambda: client.server_status(hub_user, launch.server_name) == ServerStatus.READY,
            timeout=180,
            what="the Slurm-run server to be ready",
        )
        job = queue(slurm, job_name)
        assert job["state"] == "RUNNING"
        assert (job["account"], job["partition"], job["cpus"]) == (account, "debug", "2")
        page = factory.web.get(f"/notebooks/{session.id}").get_data(as_text=True)
        assert "Your notebook is ready." in page and "Open the notebook" in page
        time_limit = slurm.run("squeue", "-h", "-j", job["id"], "-o", "%l").stdout.strip()
        assert time_limit == "1:00:00"  # the hour asked for

        # --- it computes inside the job, with Dask workers that are Slurm jobs of the same account -------------
        seen = kernel_says(
            factory,
            hub_user,
            launch.server_name,
            "import json, os\n"
            "import dask.array as da\n"
            "workers = client.run(lambda: os.environ.get('SLURM_JOB_ID'))\n"
            "print(json.dumps({'sum': client.submit(sum, [1, 2, 3]).result(),\n"
            "    'array': int(da.ones((1000, 1000), chunks=(250, 250)).sum().compute()),\n"
            "    'cluster': type(cluster).__name__, 'worker_jobs': sorted(workers.values()),\n"
            "    'job': os.environ.get('SLURM_JOB_ID'), 'account': os.environ.get('SLURM_JOB_ACCOUNT'),\n"
            "    'session': os.environ.get('PORTAL_NOTEBOOK_SESSION'), 'banner': dask_banner}))\n",
        )
        assert (seen["sum"], seen["array"], seen["cluster"]) == (6, 1_000_000, "GatewayCluster")
        assert (seen["job"], seen["account"], seen["session"]) == (job["id"], account, str(session.id))
        assert "Dask Gateway on the factory cluster (Slurm): 2 workers" in seen["banner"]
        dask_jobs = slurm.run("squeue", "-h", "--name", f"dask-gw-s{session.id}", "-o", "%i|%a").stdout.split()
        assert len(dask_jobs) == 3  # the scheduler and two workers
        assert {line.split("|")[1] for line in dask_jobs} == {account}
        assert len(seen["worker_jobs"]) == 2 and set(seen["worker_jobs"]) <= {line.split("|")[0] for line in dask_jobs}

        # --- the hub's metering notes the start but charges nothing: the job is charged from sacct --------
        first = meter_notebooks(db, settings, client)
        assert first.started == [session.id] and first.charged == {}
        wait_for(lambda: (utcnow() - session.started_at).total_seconds() >= 3, timeout=10, what="3 s of running")
        assert meter_notebooks(db, settings, client).charged == {}
        assert usage_entries(db, allocation) == []

        # --- the owner stops it: its job and its Dask jobs end; sacct's figures are charged, once each ---------
        stop_notebook(db, settings, client, factory.pi, session_id=session.id)
        db.refresh(session)
        assert session.stop_reason == BY_USER and session.charged_seconds == 0
        wait_for(lambda: not queue(slurm, job_name), timeout=60, what="the notebook's job to leave the queue")
        wait_for(
            lambda: not slurm.run("squeue", "-h", "--name", f"dask-gw-s{session.id}", "-o", "%i").stdout.strip(),
            timeout=60,
            what="the notebook's Dask jobs to end with it",
        )
        expected = {}
        for job_id in [job["id"], *(line.split("|")[0] for line in dask_jobs)]:
            ended = ended_in_sacct(slurm, job_id)
            tres = dict(part.split("=", 1) for part in ended["tres"].split(","))
            expected[job_id] = int(tres["cpu"]) * int(ended["elapsed"])
        assert expected[job["id"]] >= 2 * 3  # the notebook: 2 cores for at least 3 s

        pulled = pull_sacct(db, config, now=utcnow() + timedelta(seconds=5))
        assert pulled.imported is not None and pulled.imported.charged >= 1
        entries = usage_entries(db, allocation)
        assert sorted(-e.amount for e in entries) == sorted(v for v in expected.values() if v > 0)
        assert not any((e.idempotency_key or "").startswith("hub:") for e in entries)
        records = db.exec(select(UsageRecord).where(UsageRecord.allocation_id == allocation.id)).all()
        assert {r.external_id: r.quantity for r in records} == {k: v for k, v in expected.items() if v > 0}
        assert {r.source for r in records} == {UsageSource.SLURM}
        db.refresh(allocation)
        total = sum(expected.values())
        assert allocation.used == total and allocation.balance == 10 * HOUR - total

        again = pull_sacct(db, config, now=utcnow() + timedelta(seconds=10))
        assert again.imported is None or again.imported.charged == 0
        assert len(usage_entries(db, allocation)) == len(records)


def test_a_gpu_notebook_holds_its_gpu_and_an_exhausted_allocation_stops_it_at_once(factory: Factory) -> None:
    settings, client, slurm = factory.settings, factory.client, factory.slurm
    config = settings.slurm_cluster(CLUSTER)
    assert config is not None
    with factory.db() as db:
        allocation = project_with(db, factory, factory.gpu, 5)
        account = account_name(factory.site, allocation)
        hub_user = f"u{factory.pi.id}"
        assert sync_cluster(db, config).problems == []

        launch = launch_notebook(
            db, settings, client, factory.pi, allocation_id=allocation.id, profile="1x-h100", hours=2
        )
        session = launch.session
        assert session is not None
        job_name = f"portal-nb-{session.id}"
        wait_for(
            lambda: client.server_status(hub_user, launch.server_name) == ServerStatus.READY,
            timeout=180,
            what="the GPU server to be ready",
        )
        job = queue(slurm, job_name)
        assert (job["account"], job["partition"]) == (account, "gpu")
        assert "gpu:1" in job["gres"]
        seen = kernel_says(
            factory,
            hub_user,
            launch.server_name,
            "import json, os\nprint(json.dumps({'cuda': os.environ.get('CUDA_VISIBLE_DEVICES')}))\n",
        )
        assert seen["cuda"] in ("0", "1")  # the GPU Slurm gave the job, not the hub's guess

        # --- another job's usage exhausts the allocation: the notebook is stopped at once ------------------
        meter_notebooks(db, settings, client)
        db.refresh(allocation)
        ledger.charge_usage(db, allocation.id, allocation.balance, idempotency_key=f"other-jobs-{allocation.id}")
        db.refresh(allocation)
        assert allocation.state == AllocationState.EXHAUSTED
        db.refresh(session)
        assert session.stop_reason == EXHAUSTED
        wait_for(lambda: not queue(slurm, job_name), timeout=60, what="the job to be cancelled")
        # Slurm holds the account too: GrpTRESMins gres/gpu=0 after the next sync.
        assert sync_cluster(db, config).problems == []
        limits = slurm.run(
            "sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", "user=", "format=GrpTRESMins"
        ).stdout.strip()
        assert limits == "gres/gpu=0"

        # --- the job's real GPU-seconds are charged from sacct, once --------------------------------------
        ended = ended_in_sacct(slurm, job["id"])
        tres = dict(part.split("=", 1) for part in ended["tres"].split(","))
        assert tres["gres/gpu"] == "1"
        pull_sacct(db, config, now=utcnow() + timedelta(seconds=5))
        (record,) = db.exec(
            select(UsageRecord).where(UsageRecord.allocation_id == allocation.id, UsageRecord.source == "slurm")
        ).all()
        assert record.quantity == int(ended["elapsed"])  # one GPU × elapsed seconds
        assert db.exec(select(NotebookSession.charged_seconds).where(col(NotebookSession.id) == session.id)).one() == 0
