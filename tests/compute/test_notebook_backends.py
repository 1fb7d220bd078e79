"""Where notebooks run, as the portal decides it: honest GPUs on a hub's own machine, Slurm jobs under the
allocation's account on the factory cluster, Dask Gateway clusters for a running Slurm notebook, and a start
form that offers what can start (the real hub and Slurm paths are in tests/compute/test_notebooks_slurm.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session

from portal import create_app
from portal.config import DEV_HUB_SPAWN_CHECK_TOKEN, Settings
from portal.db import utcnow
from portal.ledger.models import Allocation, Resource
from portal.metering.services import map_slurm_account
from portal.notebook_models import NotebookSession
from portal.projects.models import ProjectMembership, ProjectRole
from tests.compute.test_compute import refused, spawn
from tests.factories import open_now, plan_capacity_around_now
from tests.ledger_world import HOUR, World, make_world, person

NO_GPU_HUB = {"kind": "local", "gpus": []}
SLURM_HUB = {"kind": "slurm", "cluster": "factory"}


def cluster_app(make_settings: Callable[..., Settings], world: World, **overrides) -> Flask:
    """A portal whose hub runs servers on the Slurm cluster ``factory`` of ``world``'s site."""
    cluster = {"name": "factory", "site": world.site.code, "notebook_user": "hub", "partitions": {"h100": "gpu"}}
    return create_app(make_settings(slurm_clusters=[cluster], hub_slurm_cluster="factory", **overrides))


# --- honest GPUs on the hub's own machine --------------------------------------------------------------------


def test_a_gpu_profile_never_starts_on_a_hub_machine_without_that_gpu(
    client: FlaskClient, db: Session, world: World
) -> None:
    allocation = open_now(db, world.project, world.gpu, 100)
    options = {"allocation": allocation.id, "profile": "1x-h100", "hours": 1}
    detail = refused(spawn(client, world.pi, options, backend=NO_GPU_HUB), "needs 1 H100 GPU", "has no GPU")
    assert "factory cluster" in detail
    # a hub that says nothing about itself is taken to have no GPU
    refused(spawn(client, world.pi, options, backend=None), "has no GPU")
    # the wrong model does not do either, nor one H100 for a two-GPU profile
    h200_only = {"kind": "local", "gpus": ["NVIDIA H200"]}
    refused(spawn(client, world.pi, options, backend=h200_only), "has NVIDIA H200")
    one_h100 = {"kind": "local", "gpus": ["NVIDIA H100 80GB HBM3"]}
    two = {"allocation": allocation.id, "profile": "2x-h100", "hours": 1}
    refused(spawn(client, world.pi, two, backend=one_h100), "needs 2 H100 GPUs")
    # where the GPUs are there, it starts (and is metered by the portal: no Slurm job)
    response = spawn(client, world.pi, options, backend=one_h100)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["slurm"] is None
    session = db.get(NotebookSession, response.json["session_id"])
    assert session is not None and session.slurm_cluster is None and not session.charged_from_slurm


def test_a_cpu_profile_runs_anywhere(client: FlaskClient, db: Session, world: World, cpu: Resource) -> None:
    allocation = open_now(db, world.project, cpu, 10)
    response = spawn(client, world.pi, {"allocation": allocation.id, "profile": "cpu", "hours": 1}, backend=None)
    assert response.status_code == 200, response.get_data(as_text=True)


# --- Slurm jobs on the factory cluster ----------------------------------------------------------------------


def test_a_slurm_hub_gets_the_job_for_the_allocations_account(
    make_settings, db: Session, world: World, cpu: Resource
) -> None:
    app = cluster_app(make_settings, world)
    client = app.test_client()
    gpu = open_now(db, world.project, world.gpu, 100)
    options = {"allocation": gpu.id, "profile": "2x-h100", "hours": 1.5}

    # no account yet: the sync has not reached this allocation
    refused(spawn(client, world.pi, options, backend=SLURM_HUB), "has no account on the cluster factory yet")
    map_slurm_account(
        db, None, cluster="factory", account=f"{world.site.code}-{gpu.id}", allocation_id=gpu.id, reason="test"
    )
    response = spawn(client, world.pi, options, backend=SLURM_HUB)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.json
    assert body["slurm"] == {
        "cluster": "factory",
        "account": f"{world.site.code}-{gpu.id}",
        "partition": "gpu",
        "gpus": 2,
        "cpus": 16,
        "memory_mb": 128 * 1024,
        "time_minutes": 90,
        "job_name": f"portal-nb-{body['session_id']}",
    }
    # Slurm chooses the GPUs: the portal sets no CUDA_VISIBLE_DEVICES, and names the account
    assert "CUDA_VISIBLE_DEVICES" not in body["environment"]
    assert body["environment"]["PORTAL_SLURM_ACCOUNT"] == f"{world.site.code}-{gpu.id}"
    session = db.get(NotebookSession, body["session_id"])
    assert session is not None and session.charged_from_slurm
    assert (session.slurm_cluster, session.slurm_account) == ("factory", f"{world.site.code}-{gpu.id}")

    # a CPU allocation without a partition of its own uses the default one
    cpu_allocation = open_now(db, world.project, cpu, 10)
    map_slurm_account(
        db,
        None,
        cluster="factory",
        account=f"{world.site.code}-{cpu_allocation.id}",
        allocation_id=cpu_allocation.id,
        reason="test",
    )
    cpu_job = spawn(
        client, world.pi, {"allocation": cpu_allocation.id, "profile": "cpu", "hours": 0.5}, backend=SLURM_HUB
    )
    assert cpu_job.status_code == 200
    assert (cpu_job.json["slurm"]["partition"], cpu_job.json["slurm"]["time_minutes"]) == ("", 30)
    app.extensions["portal.engine"].dispose()


def test_a_slurm_hub_is_refused_for_another_sites_hours_and_an_unknown_cluster(
    make_settings, db: Session, world: World
) -> None:
    app = cluster_app(make_settings, world)
    client = app.test_client()
    elsewhere = make_world(db)
    plan_capacity_around_now(db, elsewhere.gpu, 100_000 * HOUR)
    db.add(ProjectMembership(project_id=elsewhere.project.id, user_id=world.pi.id, role=ProjectRole.MEMBER))
    db.commit()
    theirs = open_now(db, elsewhere.project, elsewhere.gpu, 100)
    options = {"allocation": theirs.id, "profile": "1x-h100", "hours": 1}
    refused(spawn(client, world.pi, options, backend=SLURM_HUB), "holds hours at Test Centre", "another site")
    unknown = {"kind": "slurm", "cluster": "nowhere"}
    refused(spawn(client, world.pi, options, backend=unknown), "'nowhere', which the portal does not know")
    bad = spawn(client, world.pi, options, backend={"kind": "slurm"})
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    app.extensions["portal.engine"].dispose()


def test_settings_refuse_a_hub_cluster_that_is_not_configured(make_settings) -> None:
    with pytest.raises(ValueError, match="not one of slurm_clusters"):
        make_settings(hub_slurm_cluster="factory")
    with pytest.raises(ValueError, match="has no notebook_user"):
        make_settings(slurm_clusters=[{"name": "factory", "site": "waw"}], hub_slurm_cluster="factory")


# --- Dask Gateway's check ---------------------------------------------------------------------------------


def gateway_check(client: FlaskClient, user, session_id: int, token: str = DEV_HUB_SPAWN_CHECK_TOKEN):
    body = {"user": user if isinstance(user, str) else f"u{user.id}", "session": session_id}
    return client.post("/api/v1/hub/gateway-check", json=body, headers={"Authorization": f"Bearer {token}"})


def test_the_gateway_may_start_dask_only_for_the_owner_of_a_running_slurm_notebook(
    make_settings, db: Session, world: World, cpu: Resource
) -> None:
    app = cluster_app(make_settings, world)
    client = app.test_client()
    gpu = open_now(db, world.project, world.gpu, 100)
    account = f"{world.site.code}-{gpu.id}"
    map_slurm_account(db, None, cluster="factory", account=account, allocation_id=gpu.id, reason="test")
    started = spawn(client, world.pi, {"allocation": gpu.id, "profile": "2x-h100", "hours": 1}, backend=SLURM_HUB)
    session_id = started.json["session_id"]

    allowed = gateway_check(client, world.pi, session_id)
    assert allowed.status_code == 200, allowed.get_data(as_text=True)
    assert allowed.json == {
        "session": session_id,
        "allocation": gpu.id,
        "cluster": "factory",
        "account": account,
        "partition": "gpu",
        "worker_gpus": 1,  # one GPU per dask-cuda worker
        "worker_cores": 8,  # the profile's 16 cores over its 2 GPUs
        "worker_memory_gb": 64,
        "max_workers": 16,  # 100 GPU-hours keep more than 16 one-GPU workers busy for an hour
    }

    stranger = person(db, "Stranger")
    refused(gateway_check(client, stranger, session_id), "is not one of yours")
    refused(gateway_check(client, "u999999", session_id), "not an active user")
    refused(gateway_check(client, world.pi, 999_999), "is not one of yours")
    assert gateway_check(client, world.pi, session_id, token="wrong").status_code == 401

    # a notebook on the hub's own machine has no cluster to run Dask jobs on
    cpu_allocation = open_now(db, world.project, cpu, 10)
    local = spawn(client, world.pi, {"allocation": cpu_allocation.id, "profile": "cpu", "hours": 1}, backend=None)
    refused(gateway_check(client, world.pi, local.json["session_id"]), "runs on the hub's own machine")

    # a stopped notebook's Dask is over
    session = db.get(NotebookSession, session_id)
    assert session is not None
    session.stopped_at, session.stop_reason = utcnow(), "stopped by user"
    db.add(session)
    db.commit()
    refused(gateway_check(client, world.pi, session_id), "has stopped (stopped by user)")
    app.extensions["portal.engine"].dispose()


# --- the start form ---------------------------------------------------------------------------------------


def member_client(app: Flask, db: Session, login, world: World) -> FlaskClient:
    client = app.test_client()
    member = login(client, given_name="Ilze")
    db.add(ProjectMembership(project_id=world.project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.commit()
    return client


def test_the_start_form_offers_what_fits_the_allocation_and_says_why_a_gpu_profile_cannot_start(
    make_settings, db: Session, world: World, cpu: Resource, login
) -> None:
    app = create_app(make_settings(hub_local_gpus=[]))  # the demo: no GPU on the hub's machine
    client = member_client(app, db, login, world)
    gpu: Allocation = open_now(db, world.project, world.gpu, 100)
    cpu_allocation = open_now(db, world.project, cpu, 10)
    page = f"/projects/{world.project.id}/notebooks"

    html = client.get(f"{page}?allocation_id={gpu.id}").get_data(as_text=True)
    assert "No profile can start on this allocation here." in html
    assert 'id="unavailable-1x-h100"' in html and "has no GPU" in html
    assert 'value="cpu"' not in html  # a GPU allocation does not pay for CPU-only servers

    cpu_html = client.get(f"{page}?allocation_id={cpu_allocation.id}").get_data(as_text=True)
    assert '<option value="cpu" selected>' in cpu_html
    # htmx: choosing another allocation swaps in its profile field
    field = client.get(f"{page}/profiles?allocation_id={gpu.id}").get_data(as_text=True)
    assert field.startswith('<div class="field" id="profile-field">') and "has no GPU" in field
    app.extensions["portal.engine"].dispose()


def test_the_start_form_preselects_a_gpu_profile_the_hub_can_start(
    make_settings, db: Session, world: World, login
) -> None:
    app = create_app(make_settings(hub_local_gpus=["NVIDIA H100 80GB HBM3"]))
    client = member_client(app, db, login, world)
    gpu = open_now(db, world.project, world.gpu, 100)
    html = client.get(f"/projects/{world.project.id}/notebooks?allocation_id={gpu.id}").get_data(as_text=True)
    assert '<option value="1x-h100" selected>' in html
    assert 'id="unavailable-2x-h100"' in html and "needs 2 H100 GPUs" in html
    # another project's member learns nothing
    stranger = app.test_client()
    login(stranger, given_name="Eve")
    assert stranger.get(f"/projects/{world.project.id}/notebooks/profiles?allocation_id={gpu.id}").status_code in (
        403,
        404,
    )
    app.extensions["portal.engine"].dispose()


def test_on_the_factory_cluster_every_fitting_profile_is_offered(
    make_settings, db: Session, world: World, login
) -> None:
    app = cluster_app(make_settings, world)
    client = member_client(app, db, login, world)
    gpu = open_now(db, world.project, world.gpu, 100)
    html = client.get(f"/projects/{world.project.id}/notebooks?allocation_id={gpu.id}").get_data(as_text=True)
    assert '<option value="1x-h100" selected>' in html and '<option value="2x-h100">' in html
    assert "unavailable" not in html
    assert "jobs on the factory cluster factory" in html
    app.extensions["portal.engine"].dispose()


# --- hours promised to running notebooks ------------------------------------------------------------------


def test_hours_promised_to_running_notebooks_are_not_promised_again(
    client: FlaskClient, db: Session, world: World, cpu: Resource
) -> None:
    allocation = open_now(db, world.project, cpu, 10)  # 10 core-hours: 5 hours of the 2-core profile
    first = spawn(client, world.pi, {"allocation": allocation.id, "profile": "cpu", "hours": 4}, server_name="a")
    assert first.status_code == 200
    detail = refused(
        spawn(client, world.pi, {"allocation": allocation.id, "profile": "cpu", "hours": 2}, server_name="b"),
        "of which 8.0 core-hours are promised to running notebooks",
    )
    assert "ask for at most 1 hours" in detail
    assert (
        spawn(
            client, world.pi, {"allocation": allocation.id, "profile": "cpu", "hours": 1}, server_name="b"
        ).status_code
        == 200
    )
    # the same server spawned again replaces its own promise rather than adding to it
    again = spawn(client, world.pi, {"allocation": allocation.id, "profile": "cpu", "hours": 4}, server_name="a")
    assert again.status_code == 200, again.get_data(as_text=True)
    # once a notebook has stopped, its hours are free again
    for session_id in (first.json["session_id"], again.json["session_id"]):
        session = db.get(NotebookSession, session_id)
        assert session is not None
        session.stopped_at, session.stop_reason = utcnow(), "stopped by user"
        db.add(session)
    db.commit()
    assert (
        spawn(
            client, world.pi, {"allocation": allocation.id, "profile": "cpu", "hours": 4}, server_name="c"
        ).status_code
        == 200
    )


def test_my_sessions_says_where_a_notebook_can_be_started(make_settings, db: Session, world: World, login) -> None:
    app = create_app(make_settings())
    newcomer = app.test_client()
    login(newcomer, given_name="Nora")
    html = newcomer.get("/notebooks").get_data(as_text=True)
    assert "You are in no project or course yet" in html and 'href="/"' in html
    member = member_client(app, db, login, world)
    html = member.get("/notebooks").get_data(as_text=True)
    assert f'href="/projects/{world.project.id}/notebooks">{world.project.title}</a>' in html
    app.extensions["portal.engine"].dispose()
