"""Notebooks end to end: the portal (served over HTTP with its real OAuth2 server and spawn check), a real
JupyterHub configured against it, and the portal's hub client, launcher and metering."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import prometheus_client as metrics
import pytest
import requests
from flask import Flask
from sqlmodel import Session, col, select
from werkzeug.serving import make_server

pytest.importorskip("jupyterhub", reason="needs the [hub] extra")
pytest.importorskip("websocket", reason="needs websocket-client (the [hub] extra)")

from portal_standin.devhub import HubProcess
from portal_standin.devstack import free_port

from portal import create_app
from portal.compute.hub_client import HubClient, HubRefused, ServerStatus
from portal.compute.launch import EXHAUSTED, launch_notebook, meter_notebooks
from portal.compute.services import SpawnRefused
from portal.config import Settings
from portal.db import utcnow
from portal.errors import NotFound
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationState, LedgerEntry, ResourceKind
from portal.notebook_models import NotebookSession
from tests.compute.test_hub import SERVICE_TOKEN, local_gpu_names, run_in_kernel, wait_for
from tests.conftest import EIDAS, need_proxy
from tests.factories import cpu_project, open_now, plan_capacity_around_now
from tests.ledger_world import HOUR, make_world

pytestmark = pytest.mark.hub


@dataclass
class Stack:
    app: Flask
    settings: Settings
    portal_url: str
    hub: HubProcess
    client: HubClient


def hub_settings(make: Callable[..., Settings], hub_port: int) -> Settings:
    """Settings for a portal whose hub listens on ``hub_port`` (``make``: the ``make_settings`` fixture or
    ``load_settings`` with the same values)."""
    hub_url = f"http://127.0.0.1:{hub_port}"
    # run_in_kernel (tests/compute/test_hub.py) talks to the servers with its SERVICE_TOKEN: the portal's hub token.
    return make(hub_url=hub_url, hub_oauth_redirect_uri=f"{hub_url}/hub/oauth_callback", hub_api_token=SERVICE_TOKEN)


def start_hub(settings: Settings, portal_url: str, state: Path, **env: str) -> HubProcess:
    """A real hub for the portal at ``portal_url`` on ``settings.hub_url``'s port; ``env`` overrides its
    configuration (hub_config/jupyterhub_config.py), e.g. ``HUB_CULL_IDLE_SECONDS``."""
    hub = HubProcess(
        state,
        port=int(settings.hub_url.rsplit(":", 1)[1]),
        portal_url=portal_url,
        portal_api_token=settings.hub_spawn_check_token,
        service_token=settings.hub_api_token,
        env={
            "PORTAL_HUB_OAUTH_CLIENT_ID": settings.hub_oauth_client_id,
            "PORTAL_HUB_OAUTH_CLIENT_SECRET": settings.hub_oauth_client_secret,
            "HUB_CULL_IDLE_SECONDS": "0",
            "DASK_KERNEL_N_WORKERS": "2",
            **env,
        },
        log_path=state.parent / f"{state.name}.log",
    )
    return hub.start()


@contextmanager
def running_stack(settings: Settings, state: Path, *, port: int = 0) -> Iterator[Stack]:
    """The portal served over HTTP on ``port`` (any free one with 0; its enforcement hooks installed last) and a
    real hub against it."""
    need_proxy()
    app = create_app(settings)
    with served(app, port=port) as portal_url:
        hub = None
        try:
            hub = start_hub(settings, portal_url, state)
            yield Stack(app, settings, portal_url, hub, HubClient.from_settings(settings))
        finally:
            if hub is not None:
                hub.stop()
            app.extensions["portal.engine"].dispose()


@contextmanager
def served(app: Flask, *, port: int = 0) -> Iterator[str]:
    """``app`` served over HTTP on 127.0.0.1 (any free port with 0) in a thread; yields its URL."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


@pytest.fixture
def stack(make_settings, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(hub_settings(make_settings, free_port()), tmp_path / "hub") as running:
        yield running


def entries(db: Session, allocation: Allocation) -> list[LedgerEntry]:
    db.expire_all()
    return list(
        db.exec(
            select(LedgerEntry)
            .where(LedgerEntry.allocation_id == allocation.id, col(LedgerEntry.idempotency_key).startswith("hub:"))
            .order_by(col(LedgerEntry.id))
        ).all()
    )


def test_a_notebook_is_launched_checked_run_metered_and_stopped_when_exhausted(stack: Stack) -> None:
    settings, client = stack.settings, stack.client
    with Session(stack.app.extensions["portal.engine"], expire_on_commit=False) as db:
        world = make_world(db)
        cpu = ledger.create_resource(
            db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
        )
        plan_capacity_around_now(db, cpu, 100_000 * HOUR)
        allocation = open_now(db, world.project, cpu, 10)  # 10 core-hours: 5 hours of the 2-core profile
        theirs = open_now(db, world.other_project, cpu, 10)
        pi = world.pi
        hub_user = f"u{pi.id}"

        # --- launch: the hub asks the portal's spawn check, which records the session ------------------
        launch = launch_notebook(db, settings, client, pi, allocation_id=allocation.id, profile="cpu", hours=1)
        assert (launch.hub_user, launch.server_name) == (hub_user, f"a{allocation.id}-1")
        assert launch.status in (ServerStatus.READY, ServerStatus.PENDING)
        session = launch.session
        assert session is not None
        assert (session.allocation_id, session.profile, session.cpus, session.gpus) == (allocation.id, "cpu", 2, 0)
        assert session.max_seconds == HOUR and session.started_at is None

        wait_for(
            lambda: client.server_status(hub_user, launch.server_name) == ServerStatus.READY,
            timeout=40,
            what="the server to be ready",
        )
        cpu_spawns = {"profile": "cpu"}
        spawns = metrics.REGISTRY.get_sample_value("portal_hub_spawn_duration_seconds_sum", cpu_spawns) or 0
        first = meter_notebooks(db, settings, client)
        assert first.started == [session.id]
        db.refresh(session)
        assert session.started_at is not None
        # The spawn's duration, from the check to the portal seeing the server ready: a real server takes seconds.
        assert metrics.REGISTRY.get_sample_value("portal_hub_spawn_duration_seconds_sum", cpu_spawns) > spawns + 0.5

        # --- a Dask computation in the "Python 3 (Dask GPU)" kernel ------------------------------------
        server = client.server(hub_user, launch.server_name)
        assert server is not None
        headers = {"Authorization": f"token {SERVICE_TOKEN}"}
        kernel = requests.post(
            f"{stack.hub.url}{server.url}api/kernels", headers=headers, json={"name": "python3-dask-gpu"}, timeout=30
        )
        assert kernel.status_code == 201, kernel.text
        code = (
            "import json, os\n"
            "import dask.array as da\n"
            "print(json.dumps({'sum': client.submit(sum, [1, 2, 3]).result(),\n"
            "    'array': int(da.ones((1000, 1000), chunks=(250, 250)).sum().compute()),\n"
            "    'cluster': type(cluster).__name__, 'allocation': os.environ.get('PORTAL_ALLOCATION'),\n"
            "    'session': os.environ.get('PORTAL_NOTEBOOK_SESSION'),\n"
            "    'cuda': os.environ.get('CUDA_VISIBLE_DEVICES')}))\n"
        )
        seen = json.loads(run_in_kernel(stack.hub, server.url, kernel.json()["id"], code, timeout=40).splitlines()[-1])
        assert seen == {
            "sum": 6,
            "array": 1_000_000,
            "cluster": "LocalCluster",
            "allocation": str(allocation.id),
            "session": str(session.id),
            "cuda": "",
        }

        # --- metering: core-seconds since the last charge, once per interval -----------------------------
        wait_for(lambda: (utcnow() - session.started_at).total_seconds() >= 2, timeout=5, what="2 s of running")
        now = utcnow()
        report = meter_notebooks(db, settings, client, now)
        db.refresh(session)
        elapsed = int((now - session.started_at).total_seconds())
        assert session.charged_seconds == elapsed >= 2
        charged = entries(db, allocation)
        assert charged, "no usage entry"
        assert -sum(e.amount for e in charged) == 2 * elapsed  # two cores
        last = charged[-1]
        assert last.idempotency_key == f"hub:{session.id}:{int(session.started_at.timestamp()) + elapsed}"
        assert report.charged[session.id] == -last.amount
        db.refresh(allocation)
        assert allocation.used == 2 * elapsed

        again = meter_notebooks(db, settings, client, now)  # the same interval: nothing changes
        assert again.charged == {} and again.stopped == {}
        assert entries(db, allocation) == charged
        db.refresh(session)
        assert session.charged_seconds == elapsed

        # --- tampered launches are refused by the hub with the portal's message ---------------------------
        with pytest.raises(HubRefused) as other:
            client.start_server(hub_user, "tampered", {"allocation": theirs.id, "profile": "cpu", "hours": 1})
        assert other.value.status == 403
        assert other.value.message == f"Allocation {theirs.id} is not one of your projects' allocations."
        with pytest.raises(HubRefused) as gpus:
            client.start_server(
                hub_user, "tampered", {"allocation": allocation.id, "profile": "cpu", "hours": 1, "gpus": 8}
            )
        assert gpus.value.status == 403
        assert "'gpus'" in gpus.value.message and "does not set" in gpus.value.message
        client.stop_server(hub_user, "tampered")
        # Honest GPUs: this hub runs servers on its own machine, which it reports with each check; a GPU profile
        # that machine cannot serve is refused, saying why, and nothing starts.
        if not any("h100" in name.casefold() for name in local_gpu_names()):
            plan_capacity_around_now(db, world.gpu, 100_000 * HOUR)
            gpu_allocation = open_now(db, world.project, world.gpu, 10)
            with pytest.raises(SpawnRefused, match="needs 1 H100 GPU, but this hub runs notebooks on its own machine"):
                launch_notebook(db, settings, client, pi, allocation_id=gpu_allocation.id, profile="1x-h100", hours=1)
            assert client.server_status(hub_user, f"a{gpu_allocation.id}-1") == ServerStatus.STOPPED
        # The launcher refuses another project's allocation itself, and passes on the hub's refusals.
        with pytest.raises(NotFound):
            launch_notebook(db, settings, client, pi, allocation_id=theirs.id, profile="cpu", hours=1)
        with pytest.raises(SpawnRefused, match=r"promised to running notebooks: ask for at most 4 hours"):
            launch_notebook(db, settings, client, pi, allocation_id=allocation.id, profile="cpu", hours=6)
        assert client.server_status(hub_user, f"a{allocation.id}-2") == ServerStatus.STOPPED
        db.expire_all()
        assert [s.id for s in db.exec(select(NotebookSession)).all()] == [session.id]

        # --- an exhausted allocation stops the server at once (the enforcement hook), not a round later ---
        db.refresh(allocation)
        ledger.charge_usage(db, allocation.id, allocation.balance, idempotency_key="use-it-all")
        db.refresh(allocation)
        assert allocation.state == AllocationState.EXHAUSTED
        db.refresh(session)
        assert session.stop_reason == EXHAUSTED and session.stopped_at is not None
        assert meter_notebooks(db, settings, client).stopped == {}
        wait_for(
            lambda: client.server_status(hub_user, launch.server_name) == ServerStatus.STOPPED,
            timeout=20,
            what="the server to stop",
        )
        assert all(s.name != launch.server_name for s in client.active_servers())
        with pytest.raises(SpawnRefused, match="exhausted"):
            launch_notebook(db, settings, client, pi, allocation_id=allocation.id, profile="cpu", hours=1)
        # Stopped sessions are not metered again.
        assert meter_notebooks(db, settings, client).total == 0


def test_the_hub_logs_users_in_through_the_portal(stack: Stack, oidc_provider) -> None:
    """A browser logged in at the portal follows the hub's login: hub -> portal /oauth/authorize -> hub."""
    browser = requests.Session()
    sub = f"hubuser-{uuid.uuid4().hex[:10]}"
    oidc_provider.add_user(
        sub,
        acr=EIDAS + "substantial",
        email=f"{sub}@example.eu",
        email_verified=True,
        given_name="Hub",
        family_name="Tester",
    )
    # The portal's own login (OIDC), in the browser's cookie jar.
    start = browser.get(f"{stack.portal_url}/login/eidas", allow_redirects=False, timeout=10)
    assert start.status_code == 302, start.text
    at_provider = requests.post(start.headers["Location"], data={"sub": sub}, allow_redirects=False, timeout=10)
    assert at_provider.status_code == 302, at_provider.text
    callback = urlsplit(at_provider.headers["Location"])
    back = browser.get(f"{stack.portal_url}{callback.path}?{callback.query}", allow_redirects=False, timeout=10)
    assert back.status_code == 302, back.text

    # The hub's login: to the portal's authorize endpoint, which sends the code back to the hub.
    response = browser.get(f"{stack.hub.url}/hub/oauth_login", allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    authorize_url = urljoin(f"{stack.hub.url}/hub/oauth_login", response.headers["Location"])
    assert authorize_url.startswith(f"{stack.portal_url}/oauth/authorize?")
    response = browser.get(authorize_url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    hub_callback = response.headers["Location"]
    assert hub_callback.startswith(f"{stack.hub.url}/hub/oauth_callback?")
    response = browser.get(hub_callback, allow_redirects=False, timeout=30)
    assert response.status_code == 302, response.text
    assert "jupyterhub-hub-login" in browser.cookies

    with Session(stack.app.extensions["portal.engine"], expire_on_commit=False) as db:
        user = db.exec(select(User).where(User.email == f"{sub}@example.eu")).one()
    hub_user = stack.client.get_user(f"u{user.id}")
    assert hub_user is not None and hub_user["name"] == f"u{user.id}"
    # The hub session cookie identifies the user at the hub's API.
    me = browser.get(f"{stack.hub.url}/hub/api/user", timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["name"] == f"u{user.id}"


def test_a_member_launches_from_the_project_page_follows_the_start_and_stops_it(stack: Stack, login) -> None:
    from tests.conftest import post_form

    browser = stack.app.test_client()
    user = login(browser)
    with Session(stack.app.extensions["portal.engine"], expire_on_commit=False) as db:
        _world, project, allocation = cpu_project(db, user, hours=10, title="Notebook project")

    page = browser.get(f"/projects/{project.id}/notebooks").get_data(as_text=True)
    assert "CPU core-hours" in page and 'value="cpu"' in page
    refused = post_form(
        browser,
        f"/projects/{project.id}/notebooks",
        {"allocation_id": allocation.id, "profile": "1x-h100", "hours": "1"},
        page=f"/projects/{project.id}/notebooks",
    )
    assert refused.status_code == 403 and "GPU" in refused.get_data(as_text=True)  # the hub's spawn check said no
    launched = post_form(
        browser,
        f"/projects/{project.id}/notebooks",
        {"allocation_id": allocation.id, "profile": "cpu", "hours": "1"},
        page=f"/projects/{project.id}/notebooks",
    )
    assert launched.status_code == 302, launched.get_data(as_text=True)
    session_page = launched.headers["Location"]
    wait_for(
        lambda: "Open the notebook" in browser.get(session_page, headers={"HX-Request": "true"}).get_data(as_text=True),
        timeout=40,
        what="the session page to show the notebook ready",
    )
    mine = browser.get("/notebooks").get_data(as_text=True)
    assert f"a{allocation.id}-1" in mine and "Stop" in mine
    session_id = int(session_page.rsplit("/", 1)[1])
    stopped = post_form(browser, f"/notebooks/{session_id}/stop", page="/notebooks")
    assert stopped.status_code == 302
    assert stack.client.server_status(f"u{user.id}", f"a{allocation.id}-1") == ServerStatus.STOPPED
    assert "No notebook is running" in browser.get("/notebooks").get_data(as_text=True)
    other = stack.app.test_client()
    login(other)
    assert other.get(session_page).status_code == 404  # someone else's session
