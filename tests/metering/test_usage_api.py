"""Site agents report usage over the API: bound to their site, all or nothing, each record once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from portal.identity.services import create_agent_token, create_api_token
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, LedgerEntry, Resource, Site
from portal.metering.models import UsageRecord
from tests.conftest import portal_cli
from tests.ledger_world import HOUR, make_world, open_q1, person


@pytest.fixture
def site_setup(db):
    here = make_world(db)
    elsewhere = make_world(db)
    allocation = open_q1(db, here, 10)
    foreign = open_q1(db, elsewhere, 10)
    operator = person(db, "Operator")
    _token, plain = create_agent_token(
        db, None, owner=operator, site_id=here.site.id, name="agent", reason="test setup"
    )
    return allocation, foreign, plain, operator


def record(allocation_id: int, record_id: str, seconds: int, **extra):
    return {
        "id": record_id,
        "allocation_id": allocation_id,
        "quantity": seconds,
        "user": "anna",
        "started_at": "2025-01-05T10:00:00Z",
        "ended_at": "2025-01-05T11:00:00+00:00",
        **extra,
    }


def post(client, token, records):
    return client.post("/api/v1/usage", json={"records": records}, headers={"Authorization": f"Bearer {token}"})


def test_an_agent_reports_usage_once_however_often_it_resends(client, db, site_setup):
    allocation, _foreign, token, _operator = site_setup
    batch = [record(allocation.id, "r-1", 2 * HOUR), record(allocation.id, "r-2", HOUR)]
    first = post(client, token, batch)
    assert first.status_code == 200 and first.json == {"accepted": 2, "duplicates": 0}
    again = post(client, token, [*batch, record(allocation.id, "r-3", 60)])
    assert again.json == {"accepted": 1, "duplicates": 2}
    db.refresh(allocation)
    assert allocation.used == 3 * HOUR + 60
    usage = db.exec(select(UsageRecord).where(UsageRecord.allocation_id == allocation.id)).all()
    assert sorted(u.external_id for u in usage) == ["r-1", "r-2", "r-3"]
    assert {u.username for u in usage} == {"anna"}


def test_a_batch_with_one_bad_record_is_refused_whole(client, db, site_setup):
    allocation, foreign, token, _operator = site_setup
    response = post(
        client,
        token,
        [record(allocation.id, "ok-1", 60), record(foreign.id, "bad-1", 60), record(999_999, "bad-2", 60)],
    )
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.json["errors"] == {
        "records[1]": f"allocation {foreign.id} is not at site {agent_site_code(db, allocation)}",
        "records[2]": "allocation 999999 does not exist",
    }
    assert db.exec(select(UsageRecord)).all() == []
    db.refresh(allocation)
    assert allocation.used == 0


def agent_site_code(db, allocation) -> str:
    resource = db.get(Resource, allocation.resource_id)
    return db.get(Site, resource.site_id).code


@pytest.mark.parametrize(
    ("change", "field"),
    [({"started_at": "2025-01-05T10:00:00"}, "started_at"), ({"quantity": 0}, "quantity"), ({"id": ""}, "id")],
)
def test_malformed_records_get_a_problem_naming_the_field(client, site_setup, change, field):
    allocation, _foreign, token, _operator = site_setup
    response = post(client, token, [record(allocation.id, "x", 60, **change)])
    assert response.status_code == 422
    assert any(field in error["loc"] for error in response.json["errors"])


def test_personal_tokens_cannot_report_usage_and_agent_tokens_cannot_read_projects(client, db, site_setup):
    allocation, _foreign, agent_token, operator = site_setup
    _t, personal = create_api_token(db, operator, name="mine", scopes=["read", "write"], ttl_days=5)
    response = post(client, personal, [record(allocation.id, "p-1", 60)])
    assert response.status_code == 403
    assert "usage:write" in response.json["detail"]
    assert client.get("/api/v1/projects", headers={"Authorization": f"Bearer {agent_token}"}).status_code == 403


def test_usage_past_the_balance_exhausts_the_allocation(client, db, site_setup):
    allocation, _foreign, token, _operator = site_setup
    post(client, token, [record(allocation.id, "big", 12 * HOUR)])
    db.refresh(allocation)
    assert (allocation.balance, allocation.state) == (-2 * HOUR, "exhausted")
    assert ledger.balance_mismatches(db) == []


def test_the_agent_token_comes_from_the_command_line_once(app, db):
    world = make_world(db, code="waw")
    operator = person(db, "Ops")
    result = portal_cli(
        app, "sites", "agent-token", "WAW", "--owner", operator.email, "--name", "waw-agent", "--reason", "new agent"
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("bafp_")
    allocation = open_q1(db, world, 5)
    response = app.test_client().post(
        "/api/v1/usage",
        json={"records": [record(allocation.id, "cli-1", 60)]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.json == {"accepted": 1, "duplicates": 0}
    missing = portal_cli(
        app, "sites", "agent-token", "nowhere", "--owner", operator.email, "--name", "x", "--reason", "new agent"
    )
    assert missing.returncode == 1 and "No site with the code 'nowhere'" in missing.stderr
    assert db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == allocation.id)).all()
    assert db.get(Allocation, allocation.id) is not None


def test_usage_dated_in_the_future_is_refused_and_charges_nothing(client, db, site_setup):
    allocation, _foreign, token, _operator = site_setup
    now = datetime.now(UTC).replace(microsecond=0)
    tomorrow = record(
        allocation.id,
        "from-tomorrow",
        HOUR,
        started_at=(now + timedelta(days=1)).isoformat(),
        ended_at=(now + timedelta(days=1, hours=1)).isoformat(),
    )
    running_on = record(allocation.id, "ends-in-an-hour", HOUR, started_at=now.isoformat(),
                        ended_at=(now + timedelta(hours=1)).isoformat())  # fmt: skip
    response = post(client, token, [record(allocation.id, "past", 60), tomorrow, running_on])
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert set(response.json["errors"]) == {"records[1]", "records[2]"}
    assert "is in the future" in response.json["errors"]["records[1]"]
    assert db.exec(select(UsageRecord)).all() == []
    db.refresh(allocation)
    assert allocation.used == 0
    # an agent whose clock runs a minute ahead is not refused
    skewed = record(allocation.id, "skewed", 60, started_at=now.isoformat(),
                    ended_at=(now + timedelta(minutes=1)).isoformat())  # fmt: skip
    assert post(client, token, [skewed]).json == {"accepted": 1, "duplicates": 0}
