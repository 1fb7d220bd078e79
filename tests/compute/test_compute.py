"""Notebooks, portal side: the OAuth2 server the hub logs users in with, and the hub's spawn check."""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient
from sqlmodel import Session, select

from portal import create_app
from portal.classroom import services as classroom
from portal.compute import launch
from portal.compute.models import OAuthCode, OAuthToken
from portal.config import DEV_HUB_OAUTH_CLIENT_SECRET, DEV_HUB_SPAWN_CHECK_TOKEN, Settings
from portal.db import utcnow
from portal.identity.services import create_api_token
from portal.ledger import services as ledger
from portal.ledger.models import AllocationState, Resource
from portal.notebook_models import NotebookSession
from portal.projects.models import ProjectMembership, ProjectRole
from tests.factories import open_now
from tests.ledger_world import HOUR, World, person

REDIRECT = "http://127.0.0.1:8081/hub/oauth_callback"


# --- OAuth2 for the hub ----------------------------------------------------------------------------------


def authorize(client: FlaskClient, **params: str):
    query = {"response_type": "code", "client_id": "jupyterhub", "redirect_uri": REDIRECT, "state": "st4te"}
    query.update(params)
    return client.get(f"/oauth/authorize?{urlencode(query)}")


def code_from(response) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["st4te"]
    return query["code"][0]


def basic(client_id: str = "jupyterhub", secret: str = DEV_HUB_OAUTH_CLIENT_SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def exchange(client: FlaskClient, code: str, *, headers: dict[str, str] | None = None, **extra: str):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **extra}
    return client.post("/oauth/token", data=data, headers=basic() if headers is None else headers)


def userinfo(client: FlaskClient, access_token: str):
    return client.get("/oauth/userinfo", headers={"Authorization": f"Bearer {access_token}"})


def test_hub_login_flow_from_code_to_userinfo(app: Flask, client: FlaskClient, db: Session, login) -> None:
    user = login(client)
    code = code_from(authorize(client, scope="openid profile email"))
    hub = app.test_client()  # the hub's own requests carry no portal session
    response = exchange(hub, code)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.json
    assert body["token_type"].lower() == "bearer"
    assert body["expires_in"] == 3600
    assert "refresh_token" not in body
    stored = db.exec(select(OAuthToken).where(OAuthToken.user_id == user.id)).one()
    assert stored.digest == hashlib.sha256(body["access_token"].encode()).hexdigest()
    assert body["access_token"] not in stored.digest

    info = userinfo(hub, body["access_token"])
    assert info.status_code == 200
    assert info.json == {
        "sub": str(user.id),
        "name": f"u{user.id}",
        "preferred_username": f"u{user.id}",
        "email": user.email,
        "display_name": user.display_name,
    }

    # The code works once.
    replay = exchange(hub, code)
    assert replay.status_code == 400
    assert replay.json["error"] == "invalid_grant"
    assert db.exec(select(OAuthCode)).all() == []


def test_client_secret_post_and_pkce(app: Flask, client: FlaskClient, login) -> None:
    login(client)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    hub = app.test_client()
    creds = {"client_id": "jupyterhub", "client_secret": DEV_HUB_OAUTH_CLIENT_SECRET}

    code = code_from(authorize(client, code_challenge=challenge, code_challenge_method="S256"))
    without = exchange(hub, code, headers={}, **creds)
    assert without.status_code == 400
    assert without.json["error"] == "invalid_request"

    code = code_from(authorize(client, code_challenge=challenge, code_challenge_method="S256"))
    wrong = exchange(hub, code, headers={}, code_verifier=secrets.token_urlsafe(48), **creds)
    assert wrong.status_code == 400
    assert wrong.json["error"] == "invalid_grant"

    code = code_from(authorize(client, code_challenge=challenge, code_challenge_method="S256"))
    right = exchange(hub, code, headers={}, code_verifier=verifier, **creds)
    assert right.status_code == 200, right.get_data(as_text=True)
    assert userinfo(hub, right.json["access_token"]).status_code == 200


def test_wrong_client_secret_is_401(app: Flask, client: FlaskClient, db: Session, login) -> None:
    login(client)
    code = code_from(authorize(client))
    hub = app.test_client()
    response = exchange(hub, code, headers=basic(secret="not-the-secret"))
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"
    unknown = exchange(hub, code, headers=basic(client_id="someone-else"))
    assert unknown.status_code == 401
    assert db.exec(select(OAuthToken)).all() == []
    # The code was not spent by the failed attempts.
    assert exchange(hub, code).status_code == 200


def test_codes_go_only_to_the_configured_redirect_uri(client: FlaskClient, db: Session, login) -> None:
    login(client)
    for uri in ("https://evil.example/hub/oauth_callback", REDIRECT + "/../x", REDIRECT + "?a=1"):
        response = authorize(client, redirect_uri=uri)
        assert response.status_code == 400, uri
        assert "evil" not in response.headers.get("Location", "")
        assert response.json["error"] == "invalid_request"
    assert authorize(client, client_id="other").status_code == 400
    assert db.exec(select(OAuthCode)).all() == []


def test_token_exchange_with_another_redirect_uri_is_refused(app: Flask, client: FlaskClient, login) -> None:
    login(client)
    code = code_from(authorize(client))
    response = exchange(app.test_client(), code, redirect_uri="https://evil.example/cb")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_grant"


def test_authorize_needs_a_login(client: FlaskClient, db: Session) -> None:
    response = authorize(client)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    assert "oauth%2Fauthorize" in response.headers["Location"] or "/oauth/authorize" in response.headers["Location"]
    assert db.exec(select(OAuthCode)).all() == []


def test_expired_codes_are_refused(app: Flask, client: FlaskClient, db: Session, login) -> None:
    login(client)
    code = code_from(authorize(client))
    row = db.exec(select(OAuthCode).where(OAuthCode.code == code)).one()
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.add(row)
    db.commit()
    response = exchange(app.test_client(), code)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_grant"


def test_userinfo_refuses_unknown_expired_and_revoked_tokens(
    app: Flask, client: FlaskClient, db: Session, login
) -> None:
    login(client)
    hub = app.test_client()
    token = exchange(hub, code_from(authorize(client))).json["access_token"]
    assert userinfo(hub, token).status_code == 200
    assert userinfo(hub, "made-up-token").status_code == 401
    assert hub.get("/oauth/userinfo").status_code == 401
    response = hub.get("/oauth/userinfo", headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")

    row = db.exec(select(OAuthToken)).one()
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.add(row)
    db.commit()
    assert userinfo(hub, token).status_code == 401

    row.expires_at = utcnow() + timedelta(hours=1)
    row.revoked = True
    db.add(row)
    db.commit()
    assert userinfo(hub, token).status_code == 401


# --- the spawn check -------------------------------------------------------------------------------------


#: A hub whose own machine has two H100s (and one H200), as it reports with each spawn check.
GPU_HUB = {"kind": "local", "gpus": ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H200"]}


def spawn(
    client: FlaskClient,
    user,
    options=None,
    *,
    server_name: str = "gpu",
    token: str = DEV_HUB_SPAWN_CHECK_TOKEN,
    backend: dict | None = GPU_HUB,
):
    body = {"user": user if isinstance(user, str) else f"u{user.id}", "server_name": server_name}
    if options is not None:
        body["user_options"] = options
    if backend is not None:
        body["backend"] = backend
    return client.post("/api/v1/hub/spawn-check", json=body, headers={"Authorization": f"Bearer {token}"})


def refused(response, *words: str) -> str:
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    detail = response.json["detail"]
    for word in words:
        assert word in detail, detail
    return detail


def sessions(db: Session) -> list[NotebookSession]:
    db.expire_all()
    return list(db.exec(select(NotebookSession)).all())


def test_a_valid_spawn_gets_its_environment_and_limits_and_is_recorded(
    client: FlaskClient, db: Session, world: World
) -> None:
    allocation = open_now(db, world.project, world.gpu, 100)
    response = spawn(client, world.pi, {"allocation": allocation.id, "profile": "2x-h100", "hours": 1.5})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.json
    assert body["gpus"] == 2
    assert body["max_seconds"] == 5400
    assert body["cpu_limit"] == 16.0
    assert body["mem_limit"] == "128G"
    assert body["environment"]["PORTAL_ALLOCATION"] == str(allocation.id)
    assert body["environment"]["PORTAL_PROFILE"] == "2x-h100"
    assert body["environment"]["PORTAL_MAX_SECONDS"] == "5400"
    assert body["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    (session,) = sessions(db)
    assert body["session_id"] == session.id
    assert (session.user_id, session.project_id, session.allocation_id) == (
        world.pi.id,
        world.project.id,
        allocation.id,
    )
    assert (session.hub_user, session.server_name, session.profile) == (f"u{world.pi.id}", "gpu", "2x-h100")
    assert (session.gpus, session.max_seconds, session.charged_seconds) == (2, 5400, 0)
    assert session.started_at is None and session.stopped_at is None and session.stop_reason == ""


def test_a_plain_member_may_spawn_and_a_cpu_profile_runs_on_a_cpu_allocation(
    client: FlaskClient, db: Session, world: World, cpu: Resource
) -> None:
    member = person(db, "Member")
    db.add(ProjectMembership(project_id=world.project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.commit()
    allocation = open_now(db, world.project, cpu, 10)
    response = spawn(client, member, {"allocation": allocation.id, "profile": "cpu", "hours": 2})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    assert response.json["gpus"] == 0
    assert response.json["mem_limit"] == "4G"
    # 10 core-hours on 2 cores: at most 5 hours.
    refused(spawn(client, member, {"allocation": allocation.id, "profile": "cpu", "hours": 5.5}), "at most 5 hours")


def test_another_projects_allocation_is_refused(client: FlaskClient, db: Session, world: World) -> None:
    theirs = open_now(db, world.other_project, world.gpu, 100)
    detail = refused(spawn(client, world.pi, {"allocation": theirs.id, "profile": "1x-h100", "hours": 1}))
    assert "not one of your projects' allocations" in detail
    missing = refused(spawn(client, world.pi, {"allocation": 999_999, "profile": "1x-h100", "hours": 1}))
    assert missing == detail.replace(str(theirs.id), "999999")  # nobody learns which allocations exist
    assert sessions(db) == []


def test_exhausted_and_expired_allocations_are_refused(client: FlaskClient, db: Session, world: World) -> None:
    exhausted = open_now(db, world.project, world.gpu, 10)
    ledger.charge_usage(db, exhausted.id, 10 * HOUR, idempotency_key="use-it-all")
    db.refresh(exhausted)
    assert exhausted.state == AllocationState.EXHAUSTED
    refused(spawn(client, world.pi, {"allocation": exhausted.id, "profile": "1x-h100", "hours": 1}), "exhausted")

    # Past its end, before the worker marked it expired, and after.
    ended = open_now(db, world.project, world.gpu, 10)
    ended.ends_at = utcnow() - timedelta(seconds=5)
    db.add(ended)
    db.commit()
    refused(spawn(client, world.pi, {"allocation": ended.id, "profile": "1x-h100", "hours": 1}), "not open now")
    ledger.expire(db, ended.id)
    refused(spawn(client, world.pi, {"allocation": ended.id, "profile": "1x-h100", "hours": 1}), "expired")

    suspended = open_now(db, world.project, world.gpu, 10)
    suspended.state = AllocationState.SUSPENDED
    db.add(suspended)
    db.commit()
    refused(spawn(client, world.pi, {"allocation": suspended.id, "profile": "1x-h100", "hours": 1}), "suspended")
    assert sessions(db) == []


def test_too_many_hours_are_refused(client: FlaskClient, db: Session, world: World) -> None:
    allocation = open_now(db, world.project, world.gpu, 10)
    options = {"allocation": allocation.id, "profile": "2x-h100"}
    # 10 GPU-hours on two GPUs last 5 hours.
    assert spawn(client, world.pi, {**options, "hours": 5}).status_code == 200
    refused(spawn(client, world.pi, {**options, "hours": 5.01}), "at most 5 hours")
    refused(spawn(client, world.pi, {**options, "hours": 0}), "positive")
    refused(spawn(client, world.pi, {**options, "hours": -1}), "positive")
    # Nor past the allocation's end.
    short = open_now(db, world.project, world.gpu, 1000, days=1)
    refused(spawn(client, world.pi, {"allocation": short.id, "profile": "1x-h100", "hours": 30}), "ends in")
    assert len(sessions(db)) == 1


def test_profiles_must_fit_the_allocations_resource(
    client: FlaskClient, db: Session, world: World, cpu: Resource
) -> None:
    gpu_allocation = open_now(db, world.project, world.gpu, 100)
    cpu_allocation = open_now(db, world.project, cpu, 100)
    refused(spawn(client, world.pi, {"allocation": cpu_allocation.id, "profile": "1x-h100", "hours": 1}), "needs GPUs")
    refused(
        spawn(client, world.pi, {"allocation": gpu_allocation.id, "profile": "1x-h200", "hours": 1}), "H200", "H100"
    )
    refused(spawn(client, world.pi, {"allocation": gpu_allocation.id, "profile": "cpu", "hours": 1}), "CPUs only")
    refused(spawn(client, world.pi, {"allocation": gpu_allocation.id, "profile": "8x-b200", "hours": 1}), "no notebook")
    assert sessions(db) == []


def test_tampered_or_missing_options_are_refused(client: FlaskClient, db: Session, world: World) -> None:
    allocation = open_now(db, world.project, world.gpu, 100)
    good = {"allocation": allocation.id, "profile": "1x-h100", "hours": 1}
    refused(spawn(client, world.pi, {**good, "gpus": 8}), "'gpus'", "Start notebooks in the portal")
    refused(spawn(client, world.pi, {**good, "image": "evil"}), "'image'")
    refused(
        spawn(client, world.pi, None), "Start notebooks in the portal", "/notebooks) lists the projects and courses"
    )  # started from the hub's own page
    refused(spawn(client, world.pi, {}), "Start notebooks in the portal")
    refused(spawn(client, world.pi, {"allocation": allocation.id, "profile": "1x-h100"}), "lack hours")
    refused(spawn(client, world.pi, {**good, "allocation": str(allocation.id)}), "allocation")
    refused(spawn(client, world.pi, {**good, "allocation": True}), "allocation")
    refused(spawn(client, world.pi, {**good, "profile": 3}), "profile")
    refused(spawn(client, world.pi, {**good, "hours": "1"}), "hours")
    refused(spawn(client, world.pi, {**good, "hours": True}), "hours")
    assert sessions(db) == []


def test_unknown_or_inactive_hub_users_are_refused(client: FlaskClient, db: Session, world: World) -> None:
    allocation = open_now(db, world.project, world.gpu, 100)
    options = {"allocation": allocation.id, "profile": "1x-h100", "hours": 1}
    for name in ("admin", "u0", "u999999", f"U{world.pi.id}", f"u0{world.pi.id}"):
        refused(spawn(client, name, options), "not an active user")
    world.pi.is_active = False
    db.add(world.pi)
    db.commit()
    refused(spawn(client, world.pi, options), "not an active user")


def test_only_the_hubs_token_is_accepted(client: FlaskClient, db: Session, world: World) -> None:
    allocation = open_now(db, world.project, world.gpu, 100)
    options = {"allocation": allocation.id, "profile": "1x-h100", "hours": 1}
    body = {"user": f"u{world.pi.id}", "user_options": options}
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {DEV_HUB_SPAWN_CHECK_TOKEN}"},
        {"Authorization": f"Bearer {DEV_HUB_SPAWN_CHECK_TOKEN}x"},
    ):
        response = client.post("/api/v1/hub/spawn-check", json=body, headers=headers)
        assert response.status_code == 401, headers
        assert response.mimetype == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert sessions(db) == []


def test_a_personal_api_token_is_not_the_hubs_token(client: FlaskClient, db: Session, world: World) -> None:
    _, plain = create_api_token(db, world.pi, name="mine", scopes=["read", "write"], ttl_days=1)
    response = spawn(client, world.pi, {"allocation": 1, "profile": "cpu", "hours": 1}, token=plain)
    assert response.status_code == 401


def test_an_unset_spawn_check_token_refuses_every_spawn(make_settings) -> None:
    settings: Settings = make_settings()
    unset = settings.model_copy(update={"hub_spawn_check_token": ""})  # production before it is set
    app = create_app(unset)
    try:
        response = app.test_client().post(
            "/api/v1/hub/spawn-check", json={"user": "u1"}, headers={"Authorization": "Bearer "}
        )
        assert response.status_code == 401
    finally:
        app.extensions["portal.engine"].dispose()


def test_malformed_bodies_are_422(client: FlaskClient) -> None:
    headers = {"Authorization": f"Bearer {DEV_HUB_SPAWN_CHECK_TOKEN}"}
    response = client.post("/api/v1/hub/spawn-check", json={"user_options": {}}, headers=headers)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    response = client.post("/api/v1/hub/spawn-check", data="user=u1", headers=headers)
    assert response.status_code == 422


def test_the_openapi_document_lists_the_spawn_check_with_bearer_security(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    operation = document["paths"]["/api/v1/hub/spawn-check"]["post"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert {"200", "401", "403", "422"} <= set(operation["responses"])
    assert "SpawnCheckIn" in str(operation["requestBody"])


@pytest.mark.parametrize(
    "reason",
    [
        launch.EXHAUSTED,
        launch.TIME_LIMIT,
        launch.BY_USER,
        launch.AT_HUB,
        launch.NOT_STARTED,
        launch.REPLACED,
        "allocation ended",
        classroom.CAP_REACHED,
        classroom.REMOVED,
        classroom.COURSE_CLOSED,
    ],
)
def test_every_reason_the_portal_stops_a_notebook_for_is_told_in_words(app: Flask, reason: str) -> None:
    with app.test_request_context():
        words = render_template_string(
            '{% from "compute/_stop_reason.html" import stop_reason_words %}{{ stop_reason_words(reason) }}',
            reason=reason,
        )
    assert words and not words.startswith("The portal stopped it:")
