"""How notebook servers end, against a real JupyterHub and the portal served over HTTP: stopped by their owner,
at the hub, by the idle culler, at the time limit, never started, and at the moment their allocation is
exhausted; and how the owner is told why.

One hub (no culler) serves the module; the idle-culler test starts a second hub with a 6-second timeout.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from sqlmodel import Session, col, select

pytest.importorskip("jupyterhub", reason="needs the [hub] extra")

from portal_standin.devstack import free_port

from portal.compute.hub_client import HubClient, ServerStatus
from portal.compute.launch import (
    AT_HUB,
    BY_USER,
    EXHAUSTED,
    NEVER_STARTED_AFTER,
    NOT_STARTED,
    TIME_LIMIT,
    launch_notebook,
    meter_notebooks,
    stop_notebook,
    stop_notebooks_of_exhausted,
)
from portal.compute.services import check_spawn, hub_username
from portal.config import Settings, load_settings
from portal.db import utcnow
from portal.errors import NotFound
from portal.identity.models import User
from portal.identity.services import create_agent_token
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationState
from portal.notifications.models import Notification
from tests.compute.test_hub import wait_for
from tests.compute.test_notebooks import Stack, entries, hub_settings, running_stack, start_hub
from tests.conftest import post_form, provider_configs
from tests.factories import cpu_project
from tests.ledger_world import person

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, oidc_provider, migrated_sqlite: Path) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("notebook-stops")
    db_file = base / "portal.db"
    shutil.copy(migrated_sqlite, db_file)

    def make(**overrides: Any) -> Settings:
        return load_settings(
            env="test",
            instance_path=base / "instance",
            database_url=f"sqlite:///{db_file}",
            secret_key="test-secret-key",
            base_url="http://127.0.0.1:5000",
            oidc_providers=provider_configs(oidc_provider),
            **overrides,
        )

    with running_stack(hub_settings(make, free_port()), base / "hub") as running:
        yield running


@pytest.fixture(autouse=True)
def notebook_hook_of_this_portal(stack: Stack) -> None:
    """Enforcement hooks are process-wide and each new app installs its own: make this module's portal's the
    one in force, whatever other tests ran in this process in between."""
    ledger.register_enforcement_hook("notebook_stop", partial(stop_notebooks_of_exhausted, stack.settings))


@pytest.fixture
def db(stack: Stack) -> Iterator[Session]:
    with Session(stack.app.extensions["portal.engine"], expire_on_commit=False) as session:
        yield session


@dataclass
class Member:
    browser: FlaskClient
    user: User
    allocation: Allocation
    site_id: int


@pytest.fixture
def member(stack: Stack, db: Session, login) -> Member:
    """A logged-in member whose project has 10 CPU core-hours (5 hours of the 2-core ``cpu`` profile)."""
    browser = stack.app.test_client()
    user = login(browser)
    world, _project, allocation = cpu_project(db, user, hours=10, title="Notebook project")
    return Member(browser, user, allocation, world.site.id)


def running_notebook(db: Session, stack: Stack, member: Member, *, hours: float = 1, client: HubClient | None = None):
    """Launch on the member's allocation, wait until the hub reports it ready, and let a metering round see it
    start. Returns the session."""
    client = client or stack.client
    launch = launch_notebook(
        db, stack.settings, client, member.user, allocation_id=member.allocation.id, profile="cpu", hours=hours
    )
    assert launch.session is not None
    wait_for(
        lambda: client.server_status(launch.hub_user, launch.server_name) == ServerStatus.READY,
        timeout=40,
        what="the server to be ready",
    )
    assert meter_notebooks(db, stack.settings, client).started == [launch.session.id]
    db.refresh(launch.session)
    return launch.session


def inbox(db: Session, user: User) -> list[Notification]:
    db.expire_all()
    return list(db.exec(select(Notification).where(Notification.user_id == user.id).order_by(col(Notification.id))))


def page(browser: FlaskClient, path: str) -> str:
    response = browser.get(path)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def test_usage_that_exhausts_the_allocation_stops_its_notebook_at_once_and_says_why(
    stack: Stack, db: Session, member: Member
) -> None:
    session = running_notebook(db, stack, member)
    operator = person(db, "Operator")
    _token, agent_token = create_agent_token(
        db, None, owner=operator, site_id=member.site_id, name="agent", reason="test setup"
    )
    db.refresh(member.allocation)
    now = utcnow()

    # A site agent reports usage that takes the whole balance (the usage API, over HTTP).
    response = requests.post(
        f"{stack.portal_url}/api/v1/usage",
        headers={"Authorization": f"Bearer {agent_token}"},
        json={
            "records": [
                {
                    "id": "batch-job-1",
                    "allocation_id": member.allocation.id,
                    "quantity": member.allocation.balance,
                    "started_at": (now - timedelta(hours=1)).isoformat(),
                    "ended_at": now.isoformat(),
                }
            ]
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text

    # Gone at the hub by the time the usage API answered, not a metering round later.
    assert all(s.name != session.server_name for s in stack.client.active_servers())
    assert stack.client.server_status(session.hub_user, session.server_name) == ServerStatus.STOPPED
    db.expire_all()
    db.refresh(session)
    assert session.stop_reason == EXHAUSTED and session.stopped_at is not None
    # Charged up to the stop: the notebook's own usage entries cover its running time.
    assert session.charged_seconds == int((session.stopped_at - session.started_at).total_seconds())
    assert -sum(e.amount for e in entries(db, member.allocation)) == 2 * session.charged_seconds
    allocation = db.get(Allocation, member.allocation.id)
    assert allocation is not None and allocation.state == AllocationState.EXHAUSTED
    assert meter_notebooks(db, stack.settings, stack.client).total == 0

    # The owner is told why: an inbox message, the session page, My sessions.
    told = inbox(db, member.user)
    assert [n.subject for n in told] == [f"Your notebook {session.server_name} was stopped: allocation exhausted"]
    assert "no hours left" in told[0].body and told[0].link == f"/notebooks/{session.id}"
    assert "The allocation ran out of hours, so the portal stopped it." in page(
        member.browser, f"/notebooks/{session.id}"
    )
    mine = page(member.browser, "/notebooks")
    assert "No notebook is running" in mine
    assert "Recently stopped" in mine and session.server_name in mine and "ran out of hours" in mine


def test_a_hub_unreachable_at_exhaustion_leaves_the_stop_to_the_next_metering_round(
    stack: Stack, db: Session, member: Member
) -> None:
    session = running_notebook(db, stack, member)
    down = stack.settings.model_copy(update={"hub_url": f"http://127.0.0.1:{free_port()}"})
    ledger.register_enforcement_hook("notebook_stop", partial(stop_notebooks_of_exhausted, down))
    db.refresh(member.allocation)
    ledger.charge_usage(db, member.allocation.id, member.allocation.balance, idempotency_key=f"big-{session.id}")

    db.refresh(session)
    assert session.stopped_at is None  # the hook could not reach the hub; nothing broke
    assert stack.client.server_status(session.hub_user, session.server_name) == ServerStatus.READY
    report = meter_notebooks(db, stack.settings, stack.client)
    assert report.stopped == {session.id: EXHAUSTED}
    assert stack.client.server_status(session.hub_user, session.server_name) == ServerStatus.STOPPED
    assert [n.subject for n in inbox(db, member.user)] == [
        f"Your notebook {session.server_name} was stopped: allocation exhausted"
    ]


def test_the_owner_stops_a_notebook_once_and_pays_up_to_the_stop(
    stack: Stack, db: Session, member: Member, login
) -> None:
    session = running_notebook(db, stack, member)
    assert session.started_at is not None
    stop_at = session.started_at + timedelta(seconds=90)

    stopped = stop_notebook(db, stack.settings, stack.client, member.user, session_id=session.id, now=stop_at)
    assert (stopped.stop_reason, stopped.stopped_at, stopped.charged_seconds) == (BY_USER, stop_at, 90)
    charged = entries(db, member.allocation)
    assert -sum(e.amount for e in charged) == 2 * 90  # two cores for 90 s
    assert stack.client.server_status(session.hub_user, session.server_name) == ServerStatus.STOPPED

    # A second stop (a double click) changes nothing.
    again = stop_notebook(
        db, stack.settings, stack.client, member.user, session_id=session.id, now=stop_at + timedelta(minutes=5)
    )
    assert (again.stopped_at, again.charged_seconds) == (stop_at, 90)
    assert entries(db, member.allocation) == charged
    assert "You stopped it." in page(member.browser, f"/notebooks/{session.id}")
    assert inbox(db, member.user) == []  # nobody needs telling what they did themselves

    # Someone else can neither stop it nor see it.
    stranger_browser = stack.app.test_client()
    stranger = login(stranger_browser)
    with pytest.raises(NotFound):
        stop_notebook(db, stack.settings, stack.client, stranger, session_id=session.id)
    assert post_form(stranger_browser, f"/notebooks/{session.id}/stop", page="/notebooks").status_code == 404
    assert stranger_browser.get(f"/notebooks/{session.id}").status_code == 404


def test_a_server_stopped_at_the_hub_is_closed_and_charged_nothing_more(
    stack: Stack, db: Session, member: Member
) -> None:
    session = running_notebook(db, stack, member)
    meter_notebooks(db, stack.settings, stack.client)
    db.refresh(session)
    charged = entries(db, member.allocation)

    stack.client.stop_server(session.hub_user, session.server_name)  # as its user does on the hub's page
    report = meter_notebooks(db, stack.settings, stack.client, utcnow() + timedelta(minutes=5))
    assert report.stopped == {session.id: AT_HUB} and report.charged == {}
    db.refresh(session)
    assert session.stop_reason == AT_HUB
    assert entries(db, member.allocation) == charged
    assert meter_notebooks(db, stack.settings, stack.client, utcnow() + timedelta(minutes=10)).total == 0
    assert "stopped at the notebook hub" in page(member.browser, f"/notebooks/{session.id}")


def test_a_session_whose_server_never_started_is_closed_after_a_while_and_costs_nothing(
    stack: Stack, db: Session, member: Member
) -> None:
    # The spawn check accepted it (as the hub asks it), but the hub never reported the server.
    options = {"allocation": member.allocation.id, "profile": "cpu", "hours": 1}
    accepted = check_spawn(db, stack.settings, hub_username(member.user), "never", options).session

    assert meter_notebooks(db, stack.settings, stack.client).stopped == {}  # it may still be starting
    later = accepted.requested_at + NEVER_STARTED_AFTER + timedelta(seconds=1)
    assert meter_notebooks(db, stack.settings, stack.client, later).stopped == {accepted.id: NOT_STARTED}
    db.refresh(accepted)
    assert (accepted.stop_reason, accepted.started_at, accepted.charged_seconds) == (NOT_STARTED, None, 0)
    assert entries(db, member.allocation) == []
    assert "never started" in page(member.browser, f"/notebooks/{accepted.id}")


def test_a_notebook_is_stopped_at_its_time_limit_charged_exactly_that_and_its_owner_told(
    stack: Stack, db: Session, member: Member
) -> None:
    session = running_notebook(db, stack, member, hours=0.01)  # 36 seconds
    assert session.max_seconds == 36 and session.started_at is not None

    report = meter_notebooks(db, stack.settings, stack.client, session.started_at + timedelta(minutes=2))
    assert report.stopped == {session.id: TIME_LIMIT}
    db.refresh(session)
    assert session.charged_seconds == 36
    assert -sum(e.amount for e in entries(db, member.allocation)) == 2 * 36
    assert stack.client.server_status(session.hub_user, session.server_name) == ServerStatus.STOPPED
    told = inbox(db, member.user)
    assert [n.subject for n in told] == [f"Your notebook {session.server_name} was stopped: time limit reached"]
    assert "number of hours you chose" in page(member.browser, f"/notebooks/{session.id}")


def test_the_idle_culler_stops_an_idle_server_and_the_charge_stops_there(
    stack: Stack, db: Session, member: Member, tmp_path: Path
) -> None:
    # A second hub for the same portal, whose idle culler stops servers idle for 6 s (checking every second).
    culling = hub_settings(lambda **o: stack.settings.model_copy(update=o), free_port())
    hub = start_hub(
        culling, stack.portal_url, tmp_path / "culling-hub", HUB_CULL_IDLE_SECONDS="6", HUB_CULL_EVERY_SECONDS="1"
    )
    try:
        client = HubClient.from_settings(culling)
        session = running_notebook(db, stack, member, client=client)
        wait_for(
            lambda: all(s.name != session.server_name for s in client.active_servers()),
            timeout=30,
            what="the idle culler to stop the server",
        )
        assert client.server(session.hub_user, session.server_name) is None  # culled and removed
        db.refresh(session)
        charged = entries(db, member.allocation)
        before = session.charged_seconds

        report = meter_notebooks(db, stack.settings, client, utcnow() + timedelta(minutes=5))
        assert report.stopped == {session.id: AT_HUB} and report.charged == {}
        db.refresh(session)
        assert session.charged_seconds == before
        assert entries(db, member.allocation) == charged
        assert meter_notebooks(db, stack.settings, client, utcnow() + timedelta(hours=1)).total == 0
        assert "because it was idle too long" in page(member.browser, f"/notebooks/{session.id}")
    finally:
        hub.stop()
