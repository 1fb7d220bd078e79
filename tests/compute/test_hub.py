"""The hub side of the notebooks: the portal's spawn check as seen by the hub, and a real JupyterHub.

The portal's /api/v1/hub/spawn-check is played here by a tiny local HTTP server (``FakePortal``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

pytest.importorskip("jupyterhub", reason="needs the [hub] extra")
websocket = pytest.importorskip("websocket", reason="needs websocket-client (the [hub] extra)")

from portal_standin.devhub import REPO, HubProcess  # noqa: E402
from portal_standin.devstack import free_port, patience  # noqa: E402

sys.path.insert(0, str(REPO / "hub_config"))
from jupyterhub.spawner import SpawnException  # noqa: E402
from portal_spawn import PortalSpawnCheck, local_gpu_names  # noqa: E402

from portal.compute.hub_client import LIST_PAGE, PAGINATION, HubClient  # noqa: E402
from tests.conftest import need_proxy  # noqa: E402
from tests.json_server import Answer, Asked, JsonServer  # noqa: E402

pytestmark = pytest.mark.hub

PORTAL_API_TOKEN = "portal-api-token-for-the-hub"
SERVICE_TOKEN = "hub-service-token-for-the-portal"


@dataclass
class FakePortal:
    """Answers POST /api/v1/hub/spawn-check with ``status`` and ``body``; records what it was sent."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    http: JsonServer | None = None

    @property
    def url(self) -> str:
        assert self.http is not None
        return self.http.url

    def start(self) -> FakePortal:
        self.http = JsonServer(self._answer)
        return self

    def _answer(self, asked: Asked) -> Answer:
        self.requests.append(
            {"path": asked.target, "authorization": asked.headers.get("Authorization"), "json": asked.json}
        )
        if asked.method != "POST" or asked.target != "/api/v1/hub/spawn-check":
            return Answer(404, {"detail": "not found"})
        if asked.headers.get("Authorization") != f"Bearer {PORTAL_API_TOKEN}":
            return Answer(401, {"detail": "bad token"})
        return Answer(self.status, self.body)

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()


@pytest.fixture
def fake_portal() -> Iterator[FakePortal]:
    portal = FakePortal().start()
    yield portal
    portal.stop()


class FakeUser:
    name = "alice"


class FakeSpawner:
    """The attributes of a Spawner that the check reads and writes."""

    def __init__(self) -> None:
        self.user = FakeUser()
        self.name = "gpu-notebook"
        self.environment: dict[str, Any] = {"JUPYTER_PATH": "/srv/hub_config"}
        self.cpu_limit: float | None = None
        self.mem_limit: Any = None


# --- the spawn check against a fake portal ------------------------------------------------------------------


def test_valid_options_apply_the_portals_environment_and_limits(fake_portal: FakePortal) -> None:
    fake_portal.body = {
        "environment": {"PORTAL_ALLOCATION": "A-7", "CUDA_VISIBLE_DEVICES": "2,3"},
        "cpu_limit": 8,
        "mem_limit": "32G",
        "gpus": 2,
    }
    spawner = FakeSpawner()
    options = {"allocation": "A-7", "profile": "gpu-2", "hours": 4}
    asyncio.run(PortalSpawnCheck(fake_portal.url, PORTAL_API_TOKEN)(spawner, options))

    assert fake_portal.requests == [
        {
            "path": "/api/v1/hub/spawn-check",
            "authorization": f"Bearer {PORTAL_API_TOKEN}",
            "json": {
                "user": "alice",
                "server_name": "gpu-notebook",
                "user_options": options,
                # a local hub reports its own machine's GPUs (nvidia-smi's names; none here)
                "backend": {"kind": "local", "gpus": local_gpu_names()},
            },
        }
    ]
    assert spawner.environment == {
        "JUPYTER_PATH": "/srv/hub_config",
        "PORTAL_ALLOCATION": "A-7",
        "CUDA_VISIBLE_DEVICES": "2,3",
    }
    assert spawner.cpu_limit == 8.0
    assert spawner.mem_limit == "32G"

    # The next spawn of the same server (options reused) is checked again; nothing stale survives.
    fake_portal.body = {"environment": {}, "cpu_limit": None, "mem_limit": None, "gpus": 0}
    asyncio.run(PortalSpawnCheck(fake_portal.url, PORTAL_API_TOKEN)(spawner, {}))
    assert len(fake_portal.requests) == 2
    assert fake_portal.requests[1]["json"]["user_options"] == {}
    assert spawner.environment == {"JUPYTER_PATH": "/srv/hub_config", "CUDA_VISIBLE_DEVICES": ""}
    assert spawner.cpu_limit is None
    assert spawner.mem_limit is None


def test_a_slurm_hub_reports_its_cluster_and_submits_the_portals_job(fake_portal: FakePortal) -> None:
    job = {"cluster": "factory", "account": "waw-7", "partition": "gpu", "gpus": 2, "cpus": 16}
    fake_portal.body = {
        "environment": {"PORTAL_ALLOCATION": "7"},
        "cpu_limit": 16,
        "mem_limit": "128G",
        "gpus": 2,
        "slurm": job,
    }
    spawner = FakeSpawner()
    spawner.portal_slurm = None  # FactorySlurmSpawner has it
    spawner.environment["CUDA_VISIBLE_DEVICES"] = "0"  # never the hub's guess on a cluster
    check = PortalSpawnCheck(fake_portal.url, PORTAL_API_TOKEN, backend={"kind": "slurm", "cluster": "factory"})
    asyncio.run(check(spawner, {"allocation": 7, "profile": "2x-h100", "hours": 1}))
    assert fake_portal.requests[0]["json"]["backend"] == {"kind": "slurm", "cluster": "factory"}
    assert spawner.portal_slurm == job
    assert spawner.environment == {"JUPYTER_PATH": "/srv/hub_config", "PORTAL_ALLOCATION": "7"}


def test_gpus_without_device_list_get_the_first_devices(fake_portal: FakePortal) -> None:
    fake_portal.body = {"environment": {}, "gpus": 2}
    spawner = FakeSpawner()
    asyncio.run(PortalSpawnCheck(fake_portal.url, PORTAL_API_TOKEN)(spawner, {"allocation": "A-7"}))
    assert spawner.environment["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_a_refusal_is_a_quota_spawn_exception_with_the_portals_message(fake_portal: FakePortal) -> None:
    fake_portal.status = 403
    fake_portal.body = {"detail": "Allocation A-7 has no GPU hours left."}
    spawner = FakeSpawner()
    with pytest.raises(SpawnException) as raised:
        asyncio.run(PortalSpawnCheck(fake_portal.url, PORTAL_API_TOKEN)(spawner, {"allocation": "A-7"}))
    assert raised.value.reason == "quota"
    assert raised.value.message == "Allocation A-7 has no GPU hours left."
    assert raised.value.status_code == 403
    assert spawner.environment == {"JUPYTER_PATH": "/srv/hub_config"}


def test_a_wrong_token_refuses_without_blaming_the_user(fake_portal: FakePortal) -> None:
    with pytest.raises(SpawnException) as raised:
        asyncio.run(PortalSpawnCheck(fake_portal.url, "wrong")(FakeSpawner(), {}))
    assert raised.value.reason == "portal_unavailable"
    assert raised.value.status_code == 503


@pytest.mark.parametrize("answer", ["unreachable", "500", "not-json"])
def test_an_unavailable_portal_refuses_the_spawn(fake_portal: FakePortal, answer: str) -> None:
    url = fake_portal.url
    if answer == "unreachable":
        url = f"http://127.0.0.1:{free_port()}"
    elif answer == "500":
        fake_portal.status = 500
    else:
        fake_portal.body = ["not", "an", "object"]
    spawner = FakeSpawner()
    with pytest.raises(SpawnException) as raised:
        asyncio.run(PortalSpawnCheck(url, PORTAL_API_TOKEN, timeout=3)(spawner, {"allocation": "A-7"}))
    assert raised.value.reason == "portal_unavailable"
    assert raised.value.status_code == 503
    assert "try again later" in raised.value.message
    assert spawner.environment == {"JUPYTER_PATH": "/srv/hub_config"}


# --- the portal's client reading the hub's paged user list ------------------------------------------------------


@dataclass
class PagedUsers:
    """A hub answering ``GET /hub/api/users?state=active`` as JupyterHub does: at most ``max_limit`` users a page
    (its ``api_page_max_limit``) with ``_pagination`` when asked for it, or (``paginates=False``, a hub from before
    pagination) one list of everyone. ``asked``: the query strings it was asked with."""

    users: list[dict[str, Any]]
    max_limit: int
    paginates: bool = True
    asked: list[str] = field(default_factory=list)

    def answer(self, asked: Asked) -> Answer:
        query = asked.query
        self.asked.append(urlsplit(asked.target).query)
        if asked.headers["Authorization"] != f"token {SERVICE_TOKEN}":
            return Answer(403, {"status": 403, "message": "Action is not authorized with current scopes"})
        if asked.path != "/hub/api/users" or query.get("state") != ["active"]:
            return Answer(404, {"status": 404, "message": "Not Found"})
        if not self.paginates or asked.headers.get("Accept") != PAGINATION:
            return Answer(200, self.users)
        offset, limit = int(query["offset"][0]), min(int(query["limit"][0]), self.max_limit)
        following = None
        if offset + limit < len(self.users):
            following = {"offset": offset + limit, "limit": limit, "url": "/hub/api/users?..."}
        pagination = {"offset": offset, "limit": limit, "total": len(self.users), "next": following}
        return Answer(200, {"items": self.users[offset : offset + limit], "_pagination": pagination})


def users_with_servers(count: int) -> list[dict[str, Any]]:
    """``count`` hub users with a ready server each, in JupyterHub's user model (the part the client reads)."""
    users = []
    for i in range(count):
        name, server = f"student{i:04d}", f"a{i % 7}-1"
        model = {"name": server, "ready": True, "pending": None, "started": "2026-12-04T10:00:00.000000Z"}
        users.append({"kind": "user", "name": name, "servers": {server: {**model, "url": f"/user/{name}/{server}/"}}})
    return users


@pytest.mark.parametrize(
    ("max_limit", "paginates", "pages"),
    [(200, True, 13), (LIST_PAGE, True, 3), (200, False, 1)],
    ids=["jupyterhub-default-limit", "hub-config-limit", "no-pagination"],
)
def test_the_client_reads_every_page_of_the_active_servers(max_limit: int, paginates: bool, pages: int) -> None:
    """2,500 active users: JupyterHub's default limit answers them in 13 pages, the limit hub_config sets in 3, a hub
    without pagination in one list; each way every server is read once, in the hub's order."""
    hub = PagedUsers(users_with_servers(2_500), max_limit=max_limit, paginates=paginates)
    with JsonServer(hub.answer) as served:
        servers = HubClient(served.url, SERVICE_TOKEN).active_servers()
    assert [(s.user, s.name) for s in servers] == [(u["name"], next(iter(u["servers"]))) for u in hub.users]
    assert all(s.ready and s.started == datetime(2026, 12, 4, 10, tzinfo=UTC) for s in servers)
    assert len(hub.asked) == pages
    assert all(parse_qs(query)["limit"] == [str(LIST_PAGE)] for query in hub.asked)
    if paginates:
        assert [int(parse_qs(query)["offset"][0]) for query in hub.asked] == list(range(0, 2_500, max_limit))


# --- a real JupyterHub -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_portal() -> Iterator[FakePortal]:
    portal = FakePortal().start()
    yield portal
    portal.stop()


@pytest.fixture(scope="module")
def hub(hub_portal: FakePortal, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    need_proxy()
    state = tmp_path_factory.mktemp("hub")
    process = HubProcess(
        state,
        portal_url=hub_portal.url,
        portal_api_token=PORTAL_API_TOKEN,
        service_token=SERVICE_TOKEN,
        env={"PORTAL_HUB_OAUTH_CLIENT_SECRET": "test-secret", "DASK_KERNEL_N_WORKERS": "2"},
        log_path=state / "hub.log",
    )
    process.start()
    yield process
    process.stop()


def api(hub: HubProcess, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"token {SERVICE_TOKEN}"}
    return requests.request(method, f"{hub.api_url}{path}", headers=headers, timeout=30, **kwargs)


def wait_for(predicate: Any, *, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it is true: ``timeout`` seconds on an idle machine, more on a busy one."""
    deadline = time.monotonic() + patience(timeout)
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run_in_kernel(hub: HubProcess, server_path: str, kernel_id: str, code: str, *, timeout: float = 30) -> str:
    """Executes ``code`` over the kernel's WebSocket channels and returns its stdout (within ``timeout`` seconds on
    an idle machine, more on a busy one)."""
    timeout = patience(timeout)
    ws_url = hub.url.replace("http://", "ws://") + f"{server_path}api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {SERVICE_TOKEN}"], timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": uuid.uuid4().hex,
                        "date": "",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "buffers": [],
                }
            )
        )
        stdout: list[str] = []
        reply: dict[str, Any] | None = None
        idle = False
        deadline = time.monotonic() + timeout
        while not (reply and idle):
            assert time.monotonic() < deadline, f"no reply from the kernel; stdout so far: {stdout}"
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["header"]["msg_type"]
            if kind == "stream":
                stdout.append(message["content"]["text"])
            elif kind == "error":
                raise AssertionError("\n".join(message["content"]["traceback"]))
            elif kind == "execute_reply":
                reply = message["content"]
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
        assert reply["status"] == "ok", reply
        return "".join(stdout)
    finally:
        ws.close()


def test_a_checked_server_runs_the_dask_kernel(hub: HubProcess, hub_portal: FakePortal) -> None:
    hub_portal.status = 200
    hub_portal.body = {
        "environment": {"PORTAL_ALLOCATION": "A-7"},
        "cpu_limit": 2,
        "mem_limit": "2G",
        "gpus": 0,
    }
    hub_portal.requests.clear()
    assert api(hub, "POST", "/users/alice").status_code == 201
    options = {"allocation": "A-7", "profile": "cpu", "hours": 1}
    started = api(hub, "POST", "/users/alice/servers/lab1", json=options)
    assert started.status_code in (201, 202), started.text
    assert hub_portal.requests[-1]["json"] == {
        "user": "alice",
        "server_name": "lab1",
        "user_options": options,
        "backend": {"kind": "local", "gpus": local_gpu_names()},
    }

    def ready() -> dict[str, Any] | None:
        server = api(hub, "GET", "/users/alice").json()["servers"].get("lab1")
        return server if server and server["ready"] else None

    server = wait_for(ready, timeout=40, what="the server to be ready")
    path = server["url"]  # /user/alice/lab1/
    # The metering's read of the hub: the server listed, in pages of the size hub_config allows (not JupyterHub's 200).
    listed = HubClient(hub.url, SERVICE_TOKEN).active_servers()
    assert [(s.user, s.name, s.ready) for s in listed] == [("alice", "lab1", True)]
    page = requests.get(
        f"{hub.api_url}/users",
        params={"state": "active", "limit": 5000},
        headers={"Authorization": f"token {SERVICE_TOKEN}", "Accept": PAGINATION},
        timeout=30,
    ).json()
    assert page["_pagination"]["limit"] == LIST_PAGE
    headers = {"Authorization": f"token {SERVICE_TOKEN}"}
    specs = requests.get(f"{hub.url}{path}api/kernelspecs", headers=headers, timeout=10).json()
    assert specs["kernelspecs"]["python3-dask-gpu"]["spec"]["display_name"] == "Python 3 (Dask GPU)"
    assert specs["default"] == "python3-dask-gpu"  # what a new notebook opens with
    kernel = requests.post(
        f"{hub.url}{path}api/kernels", headers=headers, json={"name": "python3-dask-gpu"}, timeout=30
    )
    assert kernel.status_code == 201, kernel.text
    code = (
        "import json, os\n"
        "print(json.dumps({'result': client.submit(sum, [1, 2, 3]).result(),\n"
        "    'cluster': type(cluster).__name__, 'workers': len(client.scheduler_info()['workers']),\n"
        "    'allocation': os.environ.get('PORTAL_ALLOCATION'), 'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
        "    'cpu_limit': os.environ.get('CPU_LIMIT'), 'dask_tmp': os.environ.get('DASK_TEMPORARY_DIRECTORY'),\n"
        "    'dashboard': dask.config.get('distributed.dashboard.link'),\n"
        "    'port': client.scheduler_info()['services'].get('dashboard')}))\n"
    )
    out = run_in_kernel(hub, path, kernel.json()["id"], "import dask\n" + code, timeout=40)
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["result"] == 6
    assert seen["cluster"] == "LocalCluster"  # no GPU visible: the CPU fallback
    assert seen["workers"] == 2
    assert seen["allocation"] == "A-7"
    assert seen["cuda"] == ""
    assert seen["cpu_limit"] == "2.0"
    assert seen["dask_tmp"].startswith(str(hub.state_dir))
    assert seen["dashboard"] == "/user/alice/lab1/proxy/{port}/status"
    # The dashboard, through jupyter-server-proxy as the kernel's link says.
    dashboard = requests.get(f"{hub.url}{path}proxy/{seen['port']}/status", headers=headers, timeout=20)
    assert dashboard.status_code == 200
    assert "Dask" in dashboard.text

    stopped = api(hub, "DELETE", "/users/alice/servers/lab1")
    assert stopped.status_code in (202, 204), stopped.text
    wait_for(
        lambda: "lab1" not in api(hub, "GET", "/users/alice").json()["servers"],
        timeout=20,
        what="the server to stop",
    )


def test_a_refused_spawn_fails_with_the_portals_message(hub: HubProcess, hub_portal: FakePortal) -> None:
    hub_portal.status = 403
    hub_portal.body = {"detail": "Allocation A-9 has no GPU hours left."}
    hub_portal.requests.clear()
    assert api(hub, "POST", "/users/bob").status_code == 201
    refused = api(hub, "POST", "/users/bob/servers/gpu", json={"allocation": "A-9", "profile": "gpu-1", "hours": 2})
    assert refused.status_code == 403, refused.text
    assert refused.json()["message"] == "Allocation A-9 has no GPU hours left."
    assert hub_portal.requests[-1]["json"]["user_options"] == {"allocation": "A-9", "profile": "gpu-1", "hours": 2}
    assert "gpu" not in api(hub, "GET", "/users/bob").json()["servers"]


def test_stop_leaves_no_process_behind(tmp_path: Path, hub_portal: FakePortal) -> None:
    need_proxy()
    process = HubProcess(
        tmp_path, portal_url=hub_portal.url, service_token=SERVICE_TOKEN, env={"HUB_CULL_IDLE_SECONDS": "0"}
    )
    process.start()
    process.stop()
    assert process.process is not None and process.process.poll() is not None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{process.api_url}/", timeout=2)


# --- the variables the hub shares with the portal -------------------------------------------------------------


def test_the_hub_reads_what_it_shares_with_the_portal_under_the_portals_names(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from portal_env import SHARED, shared

    from portal.config import Settings

    for name in SHARED:  # every one is a setting of the portal, under the same name
        assert name.removeprefix("PORTAL_").lower() in Settings.model_fields, name
    both = {"PORTAL_HUB_API_TOKEN": "new", "HUB_PORTAL_SERVICE_TOKEN": "old"}
    with caplog.at_level("WARNING", logger="hub_config"):
        assert shared("PORTAL_HUB_API_TOKEN", env=both) == "new"
        assert shared("PORTAL_HUB_OAUTH_CLIENT_ID", "jupyterhub", env={}) == "jupyterhub"
    assert caplog.records == []
    with caplog.at_level("WARNING", logger="hub_config"):
        assert shared("PORTAL_HUB_SPAWN_CHECK_TOKEN", env={"PORTAL_API_TOKEN": "old"}) == "old"
    assert [r.getMessage() for r in caplog.records] == [
        "PORTAL_API_TOKEN is deprecated and will be removed in the next release: set PORTAL_HUB_SPAWN_CHECK_TOKEN "
        "(the portal's name)"
    ]
    # Dask Gateway's check of the portal sends the same token, under either name
    gateway = pytest.importorskip("factory_gateway")
    for env in ({"PORTAL_HUB_SPAWN_CHECK_TOKEN": "t"}, {"PORTAL_API_TOKEN": "t"}):
        assert gateway.GatewaySettings.from_env(env, state_dir=tmp_path).portal_api_token == "t"
        assert "t" in gateway.hub_service({**env, "HUB_STATE_DIR": str(tmp_path)})["environment"].values()
