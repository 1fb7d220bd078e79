"""Operators over the API: sites, resources, capacity, manual allocations, Slurm accounts and users' roles under
``/api/v1/admin``, with tokens of the ``operate`` and ``admin`` scopes that only factory staff may hold; every
write needs a reason and is audited as on the pages."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import Session, func, select

from portal.audit.models import AuditAction, AuditEvent
from portal.errors import InvalidInput
from portal.identity.models import FactoryRole, User
from portal.identity.services import create_api_token, grant_role, revoke_role
from portal.ledger.models import Allocation, CapacityPeriod, LedgerEntry, Resource, Site
from portal.metering.models import SlurmAccount
from portal.metering.services import import_sacct
from portal.projects import services as projects
from tests.ledger_world import HOUR, admin, person

REASON = "Setting up the Warsaw cluster"
SITE = {"code": "waw", "name": "Warsaw AI Factory", "city": "Warsaw", "country": "PL", "reason": REASON}
GPU = {"code": "h200", "name": "H200 GPU-hours", "kind": "gpu", "gpu_model": "H200", "reason": REASON}
Q1 = {"starts_on": "2030-01-01", "ends_on": "2030-04-01", "capacity": 1000 * HOUR, "reason": REASON}


@pytest.fixture
def settings(make_settings):
    return make_settings(slurm_clusters=[{"name": "factory", "site": "waw"}])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_of(db: Session, user: User, *scopes: str) -> dict[str, str]:
    _row, plain = create_api_token(db, user, name="script", scopes=list(scopes), ttl_days=5)
    return bearer(plain)


def assert_problem(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.json["status"] == status and response.json["title"]
    return response.json


def audit_events(db: Session, action: AuditAction) -> list[AuditEvent]:
    db.expire_all()
    return list(db.exec(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def count(db: Session, model: type) -> int:
    db.expire_all()
    return db.exec(select(func.count()).select_from(model)).one()


@pytest.fixture
def boss(db: Session) -> User:
    return admin(db)


@pytest.fixture
def operate(db: Session, boss: User) -> dict[str, str]:
    return token_of(db, boss, "operate")


def a_project(db: Session, title: str = "Shipyard vision") -> int:
    pi = person(db, "Pi")
    org = projects.create_organisation(db, pi, name=f"{title} Uni", kind="university", country="PL")
    return projects.create_project(db, pi, org, title=title).id


def set_up_site(client: FlaskClient, auth: dict[str, str]) -> tuple[int, int]:
    site = client.post("/api/v1/admin/sites", json=SITE, headers=auth)
    assert site.status_code == 201, site.get_data(as_text=True)
    resource = client.post(f"/api/v1/admin/sites/{site.json['id']}/resources", json=GPU, headers=auth)
    assert resource.status_code == 201, resource.get_data(as_text=True)
    planned = client.put(f"/api/v1/admin/resources/{resource.json['id']}/capacity", json=Q1, headers=auth)
    assert planned.status_code == 200, planned.get_data(as_text=True)
    return site.json["id"], resource.json["id"]


def allocation_body(project_id: int, resource_id: int, hours: int, **extra: Any) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "resource_id": resource_id,
        "amount": hours * HOUR,
        "starts_at": "2030-01-01T00:00:00Z",
        "ends_at": "2030-04-01T00:00:00Z",
        "title": "Pilot",
        "reason": REASON,
        **extra,
    }


# --- the set-up of one cluster ------------------------------------------------------------------------------


def test_an_operator_sets_up_a_cluster_and_its_jobs_are_charged(client, db, boss, operate):
    site_id, resource_id = set_up_site(client, operate)
    assert client.get("/api/v1/admin/sites", headers=operate).json == {
        "sites": [{"id": site_id, "code": "waw", "name": "Warsaw AI Factory", "city": "Warsaw", "country": "PL"}]
    }
    resources = client.get(f"/api/v1/admin/resources?site_id={site_id}", headers=operate).json["resources"]
    assert [(r["id"], r["code"], r["kind"], r["base_unit"]) for r in resources] == [
        (resource_id, "h200", "gpu", "GPU-second")
    ]

    first, second = a_project(db, "Shipyard vision"), a_project(db, "Baltic speech")
    opened = [
        client.post("/api/v1/admin/allocations", json=allocation_body(p, resource_id, hours), headers=operate)
        for p, hours in ((first, 100), (second, 50))
    ]
    assert [o.status_code for o in opened] == [201, 201], opened[0].get_data(as_text=True)
    assert [(o.json["balance"], o.json["source"], o.json["title"], o.json["title_shown"]) for o in opened] == [
        (100 * HOUR, "admin", "Pilot", "Pilot"),  # an operator's words: shown as written
        (50 * HOUR, "admin", "Pilot", "Pilot"),
    ]
    capacity = client.get(f"/api/v1/admin/resources/{resource_id}/capacity", headers=operate).json
    assert [(p["starts_on"], p["capacity"], p["reserved"]) for p in capacity["periods"]] == [
        ("2030-01-01", 1000 * HOUR, 150 * HOUR)
    ]

    adjusted = client.post(
        f"/api/v1/admin/allocations/{opened[1].json['id']}/adjustments",
        json={"amount": 10 * HOUR, "reason": "Compensation for the outage"},
        headers=operate,
    )
    assert adjusted.status_code == 201, adjusted.get_data(as_text=True)
    assert adjusted.json["balance_after"] == 60 * HOUR

    for allocation, account in ((opened[0], "ship-gpu"), (opened[1], "speech-gpu")):
        mapped = client.post(
            "/api/v1/admin/slurm-accounts",
            json={"cluster": "factory", "account": account, "allocation_id": allocation.json["id"], "reason": REASON},
            headers=operate,
        )
        assert mapped.status_code == 201, mapped.get_data(as_text=True)
    listed = client.get("/api/v1/admin/slurm-accounts?cluster=factory&size=1", headers=operate).json
    assert [a["account"] for a in listed["slurm_accounts"]] == ["ship-gpu"] and listed["next_cursor"]
    following = client.get(listed["next"], headers=operate).json
    assert [a["account"] for a in following["slurm_accounts"]] == ["speech-gpu"] and following["next"] is None

    line = "7001|7001|factory|ship-gpu|anna|gpu|cpu=8,gres/gpu=2|3600|2030-02-01T08:00:00|2030-02-01T09:00:00|COMPLETED"
    report = import_sacct(db, [line + "\n"], cluster="factory")
    assert report.charged_per_allocation == {opened[0].json["id"]: 2 * HOUR}

    # each write is in the audit log with the operator's name and reason, as from the pages
    for action in (
        AuditAction.SITE_CREATED,
        AuditAction.RESOURCE_CREATED,
        AuditAction.CAPACITY_CHANGED,
        AuditAction.ALLOCATION_OPENED,
        AuditAction.ALLOCATION_ADJUSTED,
        AuditAction.SLURM_ACCOUNT_MAPPED,
    ):
        events = audit_events(db, action)
        assert events, action
        assert {(e.actor_user_id, e.reason) for e in events} <= {
            (boss.id, REASON),
            (boss.id, "Compensation for the outage"),
        }, action
    opened_events = audit_events(db, AuditAction.ALLOCATION_OPENED)
    assert [e.object_id for e in opened_events] == [o.json["id"] for o in opened]


def test_capacity_is_replanned_but_never_below_what_is_reserved(client, db, operate):
    _site_id, resource_id = set_up_site(client, operate)
    project = a_project(db)
    assert client.post("/api/v1/admin/allocations", json=allocation_body(project, resource_id, 400), headers=operate)
    url = f"/api/v1/admin/resources/{resource_id}/capacity"
    replanned = client.put(url, json={**Q1, "capacity": 800 * HOUR}, headers=operate)
    assert replanned.status_code == 200 and replanned.json["capacity"] == 800 * HOUR
    assert_problem(client.put(url, json={**Q1, "capacity": 300 * HOUR}, headers=operate), 409)
    overlapping = {**Q1, "starts_on": "2030-02-01", "ends_on": "2030-05-01"}
    assert "starts_on" in assert_problem(client.put(url, json=overlapping, headers=operate), 422)["errors"]
    too_much = allocation_body(project, resource_id, 500)
    assert_problem(client.post("/api/v1/admin/allocations", json=too_much, headers=operate), 409)
    db.expire_all()
    assert db.exec(select(CapacityPeriod.capacity)).all() == [800 * HOUR]
    assert count(db, Allocation) == 1


# --- scopes and roles ----------------------------------------------------------------------------------------


def test_a_token_without_the_operate_scope_is_refused(client, db, boss):
    everyday = token_of(db, boss, "read", "write")
    body = assert_problem(client.get("/api/v1/admin/sites", headers=everyday), 403)
    assert "'operate' scope" in body["detail"]
    assert_problem(client.post("/api/v1/admin/sites", json=SITE, headers=everyday), 403)
    assert_problem(client.get("/api/v1/admin/users", headers=everyday), 403)
    roles_only = token_of(db, boss, "admin")
    assert_problem(client.post("/api/v1/admin/sites", json=SITE, headers=roles_only), 403)
    assert_problem(client.get("/api/v1/admin/sites"), 401)
    assert count(db, Site) == 0


def test_only_factory_staff_may_hold_the_privileged_scopes(client, db, boss):
    nobody = person(db, "Nobody")
    for scopes in (["operate"], ["admin"], ["read", "operate"]):
        with pytest.raises(InvalidInput) as refused:
            create_api_token(db, nobody, name="try", scopes=scopes, ttl_days=5)
        assert "scopes" in refused.value.errors

    operator = person(db, "Operator")
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="test setup")
    with pytest.raises(InvalidInput):
        create_api_token(db, operator, name="roles", scopes=["admin"], ttl_days=5)
    auth = token_of(db, operator, "operate")
    assert client.get("/api/v1/admin/sites", headers=auth).status_code == 200

    revoke_role(db, boss, operator, FactoryRole.SITE_OPERATOR, reason="moved to another team")
    body = assert_problem(client.get("/api/v1/admin/sites", headers=auth), 403)
    assert "no longer holds" in body["detail"]


def test_a_site_operator_plans_capacity_but_adds_no_site_nor_allocation(client, db, operate):
    _site_id, resource_id = set_up_site(client, operate)
    operator = person(db, "Operator")
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="test setup")
    auth = token_of(db, operator, "operate")
    q2 = {**Q1, "starts_on": "2030-04-01", "ends_on": "2030-07-01"}
    assert client.put(f"/api/v1/admin/resources/{resource_id}/capacity", json=q2, headers=auth).status_code == 200
    assert_problem(client.post("/api/v1/admin/sites", json={**SITE, "code": "vno"}, headers=auth), 403)
    body = allocation_body(a_project(db), resource_id, 10)
    assert_problem(client.post("/api/v1/admin/allocations", json=body, headers=auth), 403)
    assert_problem(client.get("/api/v1/admin/slurm-accounts", headers=auth), 403)
    assert count(db, Site) == 1 and count(db, Allocation) == 0


def test_an_admin_renames_a_site_and_corrects_its_country_but_never_its_code(client, db, operate):
    site_id, _resource_id = set_up_site(client, operate)
    url = f"/api/v1/admin/sites/{site_id}"
    change = {"name": " Warsaw AI Factory (PCSS) ", "country": "pl", "reason": "The consortium renamed it"}
    updated = client.patch(url, json=change, headers=operate)
    assert updated.status_code == 200, updated.get_data(as_text=True)
    expected = {"id": site_id, "code": "waw", "name": "Warsaw AI Factory (PCSS)", "city": "Warsaw", "country": "PL"}
    assert updated.json == expected
    assert client.get("/api/v1/admin/sites", headers=operate).json == {"sites": [expected]}
    [event] = audit_events(db, AuditAction.SITE_UPDATED)
    assert event.reason == "The consortium renamed it" and event.object_id == site_id
    assert event.details == {"name": {"before": "Warsaw AI Factory", "after": "Warsaw AI Factory (PCSS)"}}
    assert "Warsaw AI Factory (PCSS)" in event.summary

    # the same values again change nothing and record nothing; the city alone is corrected
    assert client.patch(url, json=change, headers=operate).json == expected
    assert len(audit_events(db, AuditAction.SITE_UPDATED)) == 1
    moved = client.patch(url, json={"city": "Poznań", "reason": "Typo in the set-up"}, headers=operate)
    assert moved.status_code == 200 and moved.json == {**expected, "city": "Poznań"}
    assert audit_events(db, AuditAction.SITE_UPDATED)[-1].details == {"city": {"before": "Warsaw", "after": "Poznań"}}

    # the code keys Slurm cluster names and agent tokens: a body naming it is refused, as is a body changing nothing
    refused = assert_problem(client.patch(url, json={"code": "poz", "reason": REASON}, headers=operate), 422)
    assert any(e["loc"][-1] == "code" for e in refused["errors"])
    empty = assert_problem(client.patch(url, json={"reason": REASON}, headers=operate), 422)
    assert "name" in empty["errors"]
    for bad in ({"country": "Poland"}, {"country": "P1"}, {"name": ""}, {"name": "   "}, {"city": "x" * 101}):
        assert_problem(client.patch(url, json={**bad, "reason": REASON}, headers=operate), 422)
    assert_problem(
        client.patch("/api/v1/admin/sites/424242", json={"name": "Nowhere", "reason": REASON}, headers=operate), 404
    )
    db.expire_all()
    site = db.get(Site, site_id)
    assert site is not None and (site.code, site.name, site.city) == ("waw", "Warsaw AI Factory (PCSS)", "Poznań")
    assert len(audit_events(db, AuditAction.SITE_UPDATED)) == 2


def test_a_site_operator_may_not_rename_a_site(client, db, operate):
    site_id, _resource_id = set_up_site(client, operate)
    operator = person(db, "Operator")
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="test setup")
    auth = token_of(db, operator, "operate")
    body = {"name": "Operator's own name", "reason": REASON}
    assert_problem(client.patch(f"/api/v1/admin/sites/{site_id}", json=body, headers=auth), 403)
    assert_problem(
        client.patch(f"/api/v1/admin/sites/{site_id}", json=body, headers=token_of(db, operator, "read")), 403
    )
    db.expire_all()
    assert db.get(Site, site_id).name == "Warsaw AI Factory"
    assert audit_events(db, AuditAction.SITE_UPDATED) == []


# --- reasons and bad input -----------------------------------------------------------------------------------


def test_every_write_needs_a_reason_and_changes_nothing_without_one(client, db, boss, operate):
    site_id, resource_id = set_up_site(client, operate)
    project = a_project(db)
    allocation = client.post(
        "/api/v1/admin/allocations", json=allocation_body(project, resource_id, 10), headers=operate
    ).json["id"]
    roles = token_of(db, boss, "admin")
    someone = person(db, "Someone")
    writes = [
        ("post", "/api/v1/admin/sites", {**SITE, "code": "vno"}, operate),
        ("patch", f"/api/v1/admin/sites/{site_id}", {"name": "Warsaw Factory"}, operate),
        ("post", f"/api/v1/admin/sites/{site_id}/resources", {**GPU, "code": "h100"}, operate),
        ("put", f"/api/v1/admin/resources/{resource_id}/capacity", {**Q1, "capacity": 900 * HOUR}, operate),
        ("post", "/api/v1/admin/allocations", allocation_body(project, resource_id, 5), operate),
        ("post", f"/api/v1/admin/allocations/{allocation}/adjustments", {"amount": HOUR}, operate),
        (
            "post",
            "/api/v1/admin/slurm-accounts",
            {"cluster": "factory", "account": "a", "allocation_id": allocation},
            operate,
        ),
        ("post", f"/api/v1/admin/users/{someone.id}/role-grants", {"role": "finance"}, roles),
        ("post", f"/api/v1/admin/users/{boss.id}/role-revocations", {"role": "admin"}, roles),
    ]
    before = (count(db, AuditEvent), count(db, Site), count(db, Resource), count(db, LedgerEntry))
    for method, url, body, auth in writes:
        body = {k: v for k, v in body.items() if k != "reason"}
        missing = assert_problem(getattr(client, method)(url, json=body, headers=auth), 422)
        assert any(e["loc"][-1] == "reason" for e in missing["errors"]), (url, missing)
        blank = assert_problem(getattr(client, method)(url, json={**body, "reason": "     "}, headers=auth), 422)
        assert "reason" in blank["errors"], (url, blank)
    assert (count(db, AuditEvent), count(db, Site), count(db, Resource), count(db, LedgerEntry)) == before
    assert count(db, SlurmAccount) == 0


def test_bad_input_is_answered_with_a_problem(client, db, operate):
    site_id, resource_id = set_up_site(client, operate)
    project = a_project(db)
    assert_problem(client.post("/api/v1/admin/sites", json=SITE, headers=operate), 422)  # the code is taken
    assert_problem(client.post("/api/v1/admin/sites", json={**SITE, "code": "w a w"}, headers=operate), 422)
    assert_problem(client.post("/api/v1/admin/sites", json={**SITE, "country": "Poland"}, headers=operate), 422)
    assert_problem(client.post("/api/v1/admin/sites/424242/resources", json=GPU, headers=operate), 404)
    no_model = {**GPU, "code": "h100", "gpu_model": None}
    assert (
        "gpu_model"
        in assert_problem(client.post(f"/api/v1/admin/sites/{site_id}/resources", json=no_model, headers=operate), 422)[
            "errors"
        ]
    )
    assert_problem(
        client.post(f"/api/v1/admin/sites/{site_id}/resources", json={**GPU, "kind": "quantum"}, headers=operate), 422
    )
    assert_problem(client.post(f"/api/v1/admin/sites/{site_id}/resources", json=GPU, headers=operate), 422)  # taken
    assert_problem(client.get("/api/v1/admin/resources/424242/capacity", headers=operate), 404)
    backwards = {**Q1, "starts_on": "2030-04-01", "ends_on": "2030-01-01"}
    assert_problem(client.put(f"/api/v1/admin/resources/{resource_id}/capacity", json=backwards, headers=operate), 422)
    assert_problem(
        client.put(f"/api/v1/admin/resources/{resource_id}/capacity", json={**Q1, "capacity": -1}, headers=operate), 422
    )
    for bad in (
        allocation_body(424242, resource_id, 10),
        allocation_body(project, 424242, 10),
        allocation_body(project, resource_id, 0),
        allocation_body(project, resource_id, 10, starts_at="2030-01-01T00:00:00"),  # no time zone
        allocation_body(project, resource_id, 10, ends_at="2029-01-01T00:00:00Z"),
    ):
        response = client.post("/api/v1/admin/allocations", json=bad, headers=operate)
        assert response.status_code in (404, 422), (bad, response.get_data(as_text=True))
        assert_problem(response, response.status_code)
    assert_problem(
        client.post(
            "/api/v1/admin/allocations/424242/adjustments", json={"amount": 5, "reason": REASON}, headers=operate
        ),
        404,
    )
    allocation = client.post(
        "/api/v1/admin/allocations", json=allocation_body(project, resource_id, 10), headers=operate
    ).json["id"]
    zero = {"amount": 0, "reason": REASON}
    assert_problem(client.post(f"/api/v1/admin/allocations/{allocation}/adjustments", json=zero, headers=operate), 422)
    unknown_cluster = {"cluster": "nowhere", "account": "a", "allocation_id": allocation, "reason": REASON}
    body = assert_problem(client.post("/api/v1/admin/slurm-accounts", json=unknown_cluster, headers=operate), 422)
    assert "cluster" in body["errors"]
    missing = {"cluster": "factory", "account": "a", "allocation_id": 424242, "reason": REASON}
    assert_problem(client.post("/api/v1/admin/slurm-accounts", json=missing, headers=operate), 404)
    assert_problem(client.get("/api/v1/admin/slurm-accounts?cursor=not-a-cursor", headers=operate), 400)
    not_json = client.post("/api/v1/admin/sites", data="code=waw", headers=operate)
    assert_problem(not_json, 422)
    assert count(db, Site) == 1 and count(db, Allocation) == 1 and count(db, SlurmAccount) == 0


# --- users' roles --------------------------------------------------------------------------------------------


def test_an_admin_grants_and_revokes_roles_over_the_api_and_each_is_audited(client, db, boss):
    auth = token_of(db, boss, "admin")
    clerk = person(db, "Clerk")
    granted = client.post(
        f"/api/v1/admin/users/{clerk.id}/role-grants",
        json={"role": "finance", "reason": "Runs invoicing"},
        headers=auth,
    )
    assert granted.status_code == 201, granted.get_data(as_text=True)
    assert granted.json["factory_roles"] == ["finance"]
    listed = client.get("/api/v1/admin/users?q=clerk", headers=auth).json["users"]
    assert [(u["id"], u["factory_roles"]) for u in listed] == [(clerk.id, ["finance"])]

    revoked = client.post(
        f"/api/v1/admin/users/{clerk.id}/role-revocations",
        json={"role": "finance", "reason": "Left the finance team"},
        headers=auth,
    )
    assert revoked.status_code == 200 and revoked.json["factory_roles"] == []
    assert [(e.actor_user_id, e.object_id, e.reason) for e in audit_events(db, AuditAction.ROLE_GRANTED)][-1] == (
        boss.id,
        clerk.id,
        "Runs invoicing",
    )
    assert [(e.actor_user_id, e.reason) for e in audit_events(db, AuditAction.ROLE_REVOKED)] == [
        (boss.id, "Left the finance team")
    ]

    again = {"role": "finance", "reason": "Left the finance team"}
    assert_problem(client.post(f"/api/v1/admin/users/{clerk.id}/role-revocations", json=again, headers=auth), 404)
    own = {"role": "admin", "reason": "Trying to step down"}
    assert_problem(client.post(f"/api/v1/admin/users/{boss.id}/role-revocations", json=own, headers=auth), 409)
    emperor = {"role": "emperor", "reason": "Why not"}
    assert_problem(client.post(f"/api/v1/admin/users/{clerk.id}/role-grants", json=emperor, headers=auth), 422)
    assert_problem(client.post("/api/v1/admin/users/424242/role-grants", json=again, headers=auth), 404)


def test_the_user_list_is_walked_page_by_page_by_name_and_a_search_matches_names_literally(client, db, boss):
    auth = token_of(db, boss, "admin")
    people = [person(db, name) for name in ("Clerk Dora", "Clerk Ada", "Clerk Cleo", "Clerk Bea", "Clerk_5")]
    url, found, pages = "/api/v1/admin/users?q=clerk&size=2", [], 0
    while url:
        page = client.get(url, headers=auth)
        assert page.status_code == 200, page.get_data(as_text=True)
        found += [u["display_name"] for u in page.json["users"]]
        assert (page.json["next"] is None) == (page.json["next_cursor"] is None)
        url, pages = page.json["next"], pages + 1
    assert found == sorted(p.display_name for p in people) and pages == 3
    underscore = client.get("/api/v1/admin/users?q=_", headers=auth).json["users"]
    assert [u["display_name"] for u in underscore] == ["Clerk_5"]  # `_` is no wildcard
    assert_problem(client.get("/api/v1/admin/users?cursor=bm90LWEtY3Vyc29y", headers=auth), 400)
    assert_problem(client.get("/api/v1/admin/users?size=0", headers=auth), 422)


# --- the OpenAPI document -------------------------------------------------------------------------------------


def test_the_openapi_document_names_each_operator_operations_scope(client):
    doc = client.get("/api/v1/openapi.json").json
    admin_operations = {
        (path, method): operation
        for path, operations in doc["paths"].items()
        if path.startswith("/api/v1/admin/")
        for method, operation in operations.items()
    }
    assert len(admin_operations) == 14
    for (path, method), operation in admin_operations.items():
        scope = "admin" if path.startswith("/api/v1/admin/users") else "operate"
        assert operation["security"] == [{"bearerAuth": [scope]}], (method, path)
        assert f"Scope: `{scope}`" in operation["description"], (method, path)
        if method in ("post", "put", "patch"):
            body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            assert "reason" in doc["components"]["schemas"][body]["required"], (method, path)
