"""Multi-node Dask for notebooks, for real: Dask Gateway (hub_config/factory_gateway.py and
dask_gateway_config.py) run by a real JupyterHub as its service, submitting to a real Slurm cluster
(``portal_standin.devstack_slurm``), authenticating users by their hub tokens, and asking a stand-in of the portal's
``POST /api/v1/hub/gateway-check`` (``GatewayPortal``, the endpoint's contract) which account a notebook
session's Dask jobs are charged to.

The hub's configuration is hub_config/jupyterhub_config.py plus what jupyterhub_config.py will add behind
``HUB_DASK_GATEWAY=1`` (``HUB_CONFIG``: the service, the roles, the servers' environment, the post-stop hook).

One Slurm cluster and one hub serve the whole file, in one pytest-xdist group with the other Slurm tests. Every
wait polls with a deadline that grows with the machine's load (``patience``); nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import runpy
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

pytest.importorskip("jupyterhub", reason="needs the [hub] extra")
pytest.importorskip("websocket", reason="needs websocket-client (the [hub] extra)")
pytest.importorskip("dask_gateway_server", reason="needs dask-gateway-server[jobqueue] (the [hub] extra)")
dask_gateway = pytest.importorskip("dask_gateway", reason="needs dask-gateway (the [hub] extra)")

from dask_gateway.auth import JupyterHubAuth  # noqa: E402
from dask_gateway_server.utils import FrozenAttrDict  # noqa: E402
from portal_standin.devhub import REPO, HubProcess  # noqa: E402
from portal_standin.devstack import free_port, patience  # noqa: E402
from portal_standin.devstack_slurm import SlurmCluster  # noqa: E402

from tests.compute.test_hub import SERVICE_TOKEN, run_in_kernel  # noqa: E402
from tests.conftest import need_proxy  # noqa: E402
from tests.json_server import Answer, Asked, JsonServer  # noqa: E402

sys.path.insert(0, str(REPO / "hub_config"))
import factory_gateway as fg  # noqa: E402

pytestmark = [
    pytest.mark.hub,
    pytest.mark.xdist_group("slurm"),
    # dask-gateway 2026.3.0: a closed Gateway (GatewayCluster.close() closes its own) raises RuntimeError
    # ("Accessing the loop property while the loop is not running") when garbage-collected, because
    # Gateway.__del__ calls close() again. Harmless; the tests collect garbage before they end (``_collect``).
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <function Gateway.__del__:pytest.PytestUnraisableExceptionWarning"
    ),
]

PORTAL_API_TOKEN = "portal-api-token-for-the-hub-and-gateway"
ADMIN_TOKEN = "gateway-test-admin-token"  # a test service that may issue user tokens (the portal's may not)
ACCOUNT = f"t{uuid.uuid4().hex[:8]}-17"  # as the portal names accounts: <site>-<allocation>
STARTUP = REPO / "hub_config" / "kernels" / "python3-dask-gpu" / "dask_kernel_startup.py"
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")

HUB_CONFIG = """\
# written by tests/compute/test_gateway.py: hub_config/jupyterhub_config.py (HUB_DASK_GATEWAY=1 wires the gateway
# in) plus a test service that may issue user tokens, which the portal's service may not
import os

c = get_config()  # noqa: F821
load_subconfig({config!r})  # noqa: F821
c.JupyterHub.services = [
    *c.JupyterHub.services,
    {{"name": "gateway-test", "api_token": os.environ["GATEWAY_TEST_ADMIN_TOKEN"]}},
]
c.JupyterHub.load_roles = [
    *c.JupyterHub.load_roles,
    {{"name": "gateway-test", "scopes": ["admin:users", "tokens"], "services": ["gateway-test"]}},
]
"""


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + patience(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {patience(timeout):.0f} s waiting for {what}")
        time.sleep(every)


def decision(session: int, **changes: Any) -> dict[str, Any]:
    """A 200 answer of the portal's gateway check (its documented contract)."""
    return {
        "session": session,
        "allocation": 17,
        "cluster": "factory",
        "account": ACCOUNT,
        "partition": "",
        "worker_gpus": 0,
        "worker_cores": 1,
        "worker_memory_gb": 0.5,  # small: Slurm refuses a job asking for more than the node's RealMemory
        "max_workers": 4,
        **changes,
    }


@dataclass
class GatewayPortal:
    """The portal's ``gateway-check`` (per session: status and body, or ``"hang up"``) and ``spawn-check``."""

    answers: dict[int, Any] = field(default_factory=dict)
    spawn: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    http: JsonServer | None = None

    @property
    def url(self) -> str:
        assert self.http is not None
        return self.http.url

    def gateway_checks(self, session: int) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == fg.GATEWAY_CHECK_PATH and r["json"].get("session") == session]

    def start(self) -> GatewayPortal:
        self.http = JsonServer(self._answer)
        return self

    def _answer(self, asked: Asked) -> Answer | None:
        self.requests.append(
            {"path": asked.target, "authorization": asked.headers.get("Authorization"), "json": asked.json}
        )
        if asked.headers.get("Authorization") != f"Bearer {PORTAL_API_TOKEN}":
            return Answer(401, {"detail": "bad token"})
        if asked.target == "/api/v1/hub/spawn-check":
            return Answer(200, self.spawn)
        if asked.target != fg.GATEWAY_CHECK_PATH:
            return Answer(404, {"detail": "not found"})
        answer = self.answers.get((asked.json or {}).get("session"), (404, {"detail": "No such notebook session."}))
        if answer == "hang up":
            return None  # no response at all: the client sees the connection closed
        status, body = answer
        return Answer(status, body, "application/problem+json" if status >= 400 else "application/json")

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()


@pytest.fixture(scope="module")
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The test worker's Slurm cluster (tests/conftest.py) with this module's allocation account, which the
    gateway's user may submit to."""
    slurm_cluster.sacctmgr("add", "account", ACCOUNT, "cluster=factory")
    slurm_cluster.sacctmgr("add", "user", fg.current_user(), f"account={ACCOUNT}")
    return slurm_cluster


@pytest.fixture(scope="module")
def portal() -> Iterator[GatewayPortal]:
    stand_in = GatewayPortal().start()
    yield stand_in
    stand_in.stop()


@dataclass
class Stack:
    hub: HubProcess
    slurm: SlurmCluster
    portal: GatewayPortal
    tcp_port: int

    @property
    def address(self) -> str:
        return f"{self.hub.url}/services/dask-gateway"

    @property
    def proxy_address(self) -> str:
        return f"gateway://127.0.0.1:{self.tcp_port}"

    def token(self, user: str) -> str:
        """A hub API token of ``user``, as a notebook server's kernel holds one."""
        headers = {"Authorization": f"token {ADMIN_TOKEN}"}
        requests.post(f"{self.hub.api_url}/users/{user}", headers=headers, timeout=30)
        made = requests.post(
            f"{self.hub.api_url}/users/{user}/tokens",
            headers=headers,
            json={"note": "test_gateway", "expires_in": 3600},
            timeout=30,
        )
        assert made.status_code == 201, made.text
        return made.json()["token"]

    def gateway(self, user: str) -> Any:
        return dask_gateway.Gateway(
            address=self.address, proxy_address=self.proxy_address, auth=JupyterHubAuth(api_token=self.token(user))
        )

    def jobs(self, session: int, *, states: tuple[str, ...] = ACTIVE) -> list[dict[str, str]]:
        """The session's Slurm jobs in ``states``, each as ``scontrol show job`` describes it."""
        listed = self.slurm.run(
            "squeue", "-h", f"--name={fg.job_name(session)}", "-t", ",".join(states), "-o", "%i", check=False
        ).stdout.split()
        return [job for job_id in listed if (job := self.job(job_id))]

    def job(self, job_id: str) -> dict[str, str]:
        shown = self.slurm.run("scontrol", "-o", "show", "job", job_id, check=False).stdout.strip()
        return dict(part.split("=", 1) for part in shown.split() if "=" in part)

    def jobs_if(self, session: int, count: int, **kwargs: Any) -> list[dict[str, str]] | None:
        jobs = self.jobs(session, **kwargs)
        return jobs if len(jobs) == count else None

    def accounted_if(self, session: int, count: int) -> list[dict[str, str]] | None:
        """The session's jobs in sacct once there are ``count`` of them and all have ended."""
        rows = self.accounted(session)
        return rows if len(rows) == count and all(row["state"] not in ACTIVE for row in rows) else None

    def accounted(self, session: int) -> list[dict[str, str]]:
        """What sacct (the portal's usage import) knows of the session's jobs."""
        out = self.slurm.run(
            "sacct", "-X", "-n", "-P", "--allusers", f"--name={fg.job_name(session)}",
            "--format=JobIDRaw,JobName,Account,AllocCPUS,State", check=False,
        ).stdout  # fmt: skip
        keys = ("id", "name", "account", "cpus", "state")
        return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def stack(slurm: SlurmCluster, portal: GatewayPortal, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need_proxy()
    state = tmp_path_factory.mktemp("hub")
    config = state.parent / f"{state.name}-config.py"
    config.write_text(HUB_CONFIG.format(config=str(REPO / "hub_config" / "jupyterhub_config.py")))
    tcp_port = free_port()
    hub = HubProcess(
        state,
        portal_url=portal.url,
        portal_api_token=PORTAL_API_TOKEN,
        service_token=SERVICE_TOKEN,
        config=config,
        env={
            "PORTAL_HUB_OAUTH_CLIENT_SECRET": "test-secret",
            "HUB_CULL_IDLE_SECONDS": "0",
            "HUB_DASK_GATEWAY": "1",
            "HUB_DASK_GATEWAY_PORT": str(free_port()),
            "HUB_DASK_GATEWAY_TCP_PORT": str(tcp_port),
            "HUB_DASK_GATEWAY_SCHEDULER_MEMORY": "512 M",
            "SLURM_CONF": str(slurm.conf),
            "GATEWAY_TEST_ADMIN_TOKEN": ADMIN_TOKEN,
            "DASK_KERNEL_N_WORKERS": "2",
            "DASK_KERNEL_GATEWAY_TIMEOUT": str(int(patience(300))),
        },
        log_path=state.parent / f"{state.name}.log",
    )
    hub.start(timeout=90)  # HubProcess waits longer on a busy machine by itself
    running = Stack(hub, slurm, portal, tcp_port)
    try:
        wait_for(
            lambda: _answers(f"{running.address}/api/health"),
            timeout=120,
            what="the gateway's health check through the hub's proxy",
        )
        yield running
    finally:
        hub.stop(timeout=patience(60))


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _collect() -> None:
    """Collect the test's closed dask-gateway clients now, while the test's warning filters apply."""
    gc.collect()


def _shutdown(cluster: Any) -> None:
    try:
        cluster.shutdown()
    except Exception as exc:  # cleanup after a failed assertion must not hide it
        logging.getLogger(__name__).warning("shutting down %s failed: %r", cluster, exc)


# --- (a) a kernel's cluster: scheduler and workers are Slurm jobs under the allocation's account ---------------------


def test_a_notebooks_cluster_runs_as_slurm_jobs_under_the_allocations_account(stack: Stack) -> None:
    session = 55
    stack.portal.answers[session] = (200, decision(session, worker_cores=2, worker_memory_gb=0.75))
    gateway = stack.gateway("u42")
    cluster = gateway.new_cluster(session=session)  # what the kernel's GatewayCluster(session=...) sends
    client = None
    try:
        # The gateway asked the portal, with the hub's token, about this user and session.
        checks = stack.portal.gateway_checks(session)
        assert checks == [
            {
                "path": "/api/v1/hub/gateway-check",
                "authorization": f"Bearer {PORTAL_API_TOKEN}",
                "json": {"user": "u42", "session": session},
            }
        ]
        cluster.scale(2)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=patience(300))

        jobs = wait_for(
            lambda: stack.jobs_if(session, 3, states=("RUNNING",)),
            timeout=60,
            what="a scheduler and two worker jobs running",
        )
        scheduler = [job for job in jobs if "/dask-scheduler-" in job["StdOut"]]
        workers = [job for job in jobs if "/dask-worker-" in job["StdOut"]]
        assert len(scheduler) == 1 and len(workers) == 2
        assert {job["JobName"] for job in jobs} == {"dask-gw-s55"}
        assert {job["Account"] for job in jobs} == {ACCOUNT}
        assert scheduler[0]["CPUs/Task"] == "1"  # the scheduler's size
        assert {job["CPUs/Task"] for job in workers} == {"2"}  # the portal's worker_cores
        assert {job["MinMemoryNode"] for job in workers} == {"768M"}  # 0.75 GiB
        assert not any("gpu" in job.get("TresPerNode", "") for job in jobs)

        # A computation, spread over the two worker jobs.
        assert client.submit(sum, [1, 2, 3]).result() == 6
        import dask.array as da

        assert int(da.ones((2000, 2000), chunks=(250, 250)).sum().compute()) == 4_000_000
        worker_jobs = set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
        assert worker_jobs == {job["JobId"] for job in workers}

        # scale(1) releases one worker job.
        cluster.scale(1)
        remaining = wait_for(
            lambda: stack.jobs_if(session, 2), timeout=120, what="one worker job to end after scale(1)"
        )
        assert {job["JobId"] for job in remaining} < {job["JobId"] for job in jobs}
        assert scheduler[0]["JobId"] in {job["JobId"] for job in remaining}
        assert client.submit(sum, [4, 5]).result() == 9

        # shutdown cancels every job; sacct has them all under the allocation's account (what the portal charges).
        client.close()
        cluster.shutdown()
        wait_for(lambda: not stack.jobs(session), timeout=120, what="every job of the cluster to end")
        ended = wait_for(
            lambda: stack.accounted_if(session, 3), timeout=60, what="sacct to record the three ended jobs"
        )
        assert {row["account"] for row in ended} == {ACCOUNT}
        assert {row["id"] for row in ended} == {job["JobId"] for job in jobs}
        assert gateway.list_clusters() == []
    finally:
        _shutdown(cluster)
        del client, cluster, gateway
        _collect()


# --- (b) refusals: the portal's detail, or "could not confirm"; nothing is submitted ----------------------------------


def test_the_gateway_refuses_with_the_portals_reason_and_submits_nothing(stack: Stack) -> None:
    session = 56
    gateway = stack.gateway("u42")
    # gateway.submit: the request GatewayCluster(session=...) starts with. (A GatewayCluster that failed to start
    # is closed from its __del__, which can deadlock dask-gateway 2026.3.0's client when the garbage collector
    # runs it while another Gateway starts its event loop: the tests keep to requests.)
    try:
        stack.portal.answers[session] = (
            403,
            {"type": "about:blank", "title": "Forbidden", "status": 403, "detail": "Allocation 17 has no hours left."},
        )
        with pytest.raises(ValueError, match=r"^Allocation 17 has no hours left\.$"):
            gateway.submit(session=session)

        for answer in ((500, {"detail": "database down"}), "hang up", (200, {"unexpected": True})):
            stack.portal.answers[session] = answer
            with pytest.raises(ValueError, match="The portal could not confirm"):
                gateway.submit(session=session)

        # Without a session, the portal is not even asked.
        asked = len(stack.portal.requests)
        with pytest.raises(ValueError, match="belong to a notebook"):
            gateway.submit()
        assert len(stack.portal.requests) == asked
        assert stack.portal.gateway_checks(session)[-1]["json"] == {"user": "u42", "session": session}
        assert stack.jobs(session) == [] and stack.accounted(session) == []
        assert gateway.list_clusters() == []
    finally:
        del gateway
        _collect()


def test_the_options_handler_refuses_when_the_portal_is_unreachable_or_says_no() -> None:
    user = SimpleNamespace(name="u42")
    options = FrozenAttrDict({"session": 7, "worker_cores": 0, "worker_memory": 0.0})
    unreachable = fg.PortalGatewayCheck(f"http://127.0.0.1:{free_port()}", PORTAL_API_TOKEN, timeout=3)
    with pytest.raises(fg.GatewayRefused, match="The portal could not confirm"):
        unreachable(options, user)

    stand_in = GatewayPortal().start()
    try:
        stand_in.answers[7] = (200, decision(7, worker_cores=2, worker_gpus=2))
        check = fg.PortalGatewayCheck(stand_in.url, PORTAL_API_TOKEN, timeout=3)
        with pytest.raises(fg.GatewayRefused, match="one GPU per worker"):
            check(options, user)
        stand_in.answers[7] = (200, decision(7, worker_cores=2))
        with pytest.raises(fg.GatewayRefused, match="at most 2 cores per Dask worker"):
            check(FrozenAttrDict({**options, "worker_cores": 3}), user)
        assert check(options, user) == {
            "session": 7,
            "account": ACCOUNT,
            "partition": "",
            "worker_cores": 2,
            "worker_memory": 2**29,
            "cluster_max_workers": 4,
            "worker_gpus": 0,
        }
        with pytest.raises(fg.GatewayRefused, match="The portal could not confirm"):  # 401: a wrong token
            fg.PortalGatewayCheck(stand_in.url, "wrong", timeout=3)(options, user)
        other_cluster = fg.PortalGatewayCheck(stand_in.url, PORTAL_API_TOKEN, slurm_cluster="other")
        with pytest.raises(fg.GatewayRefused, match="runs on the Slurm cluster factory"):
            other_cluster(options, user)
    finally:
        stand_in.stop()


# --- (c) the hub's post-stop hook cancels a session's jobs, and only those -------------------------------------------


def test_stop_gateway_jobs_cancels_the_sessions_jobs_only(slurm: SlurmCluster, tmp_path: Path) -> None:
    def submit(name: str) -> str:
        return slurm.run(
            "sbatch", "--parsable", f"--job-name={name}", f"--account={ACCOUNT}", "--mem=10M", "--wrap", "sleep 600"
        ).stdout.strip()

    ours = {submit("dask-gw-s57"), submit("dask-gw-s57")}
    theirs = submit("dask-gw-s570")
    env = {**os.environ, "SLURM_CONF": str(slurm.conf)}

    def active(job_id: str) -> bool:
        state = slurm.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        return state in ACTIVE

    try:
        wait_for(lambda: all(active(j) for j in [*ours, theirs]), timeout=30, what="the jobs to be queued")
        no_session = SimpleNamespace(environment={}, user_options={}, log=logging.getLogger(__name__))
        assert asyncio.run(fg.stop_gateway_jobs(no_session, env)) is False
        spawner = SimpleNamespace(
            environment={"PORTAL_NOTEBOOK_SESSION": "57"}, user_options={}, log=logging.getLogger(__name__)
        )
        # scancel failing (here: an empty slurm.conf) is logged and reported, never raised into the hub.
        broken = tmp_path / "slurm.conf"
        broken.write_text("")
        assert asyncio.run(fg.stop_gateway_jobs(spawner, {**env, "SLURM_CONF": str(broken)})) is False
        assert all(active(j) for j in ours)

        assert asyncio.run(fg.stop_gateway_jobs(spawner, env)) is True
        wait_for(lambda: not any(active(j) for j in ours), timeout=60, what="session 57's jobs to be cancelled")
        assert active(theirs)
    finally:
        slurm.run("scancel", *ours, theirs, check=False)


# --- (d) GPU workers: --gres and dask-cuda-worker, the scheduler without --------------------------------------------


def test_gpu_workers_ask_slurm_for_their_gpu_and_run_dask_cuda_worker(tmp_path: Path) -> None:
    gpu_decision = decision(61, worker_gpus=1, worker_cores=8, worker_memory_gb=64, partition="gpu")
    asked = FrozenAttrDict({"session": 61, "worker_cores": 0, "worker_memory": 0.0})
    # without dask-cuda in the cluster's environment, GPU workers are refused at once, saying why
    missing = fg.PortalGatewayCheck("http://127.0.0.1:9", PORTAL_API_TOKEN, gpu_worker_cmd=[str(tmp_path / "none")])
    with pytest.raises(fg.GatewayRefused, match="dask-cuda, which is not installed"):
        missing.configuration(gpu_decision, asked)
    # the command line is what is checked here (no GPU on this machine): the program only has to exist
    program = tmp_path / "env" / "bin" / "dask-cuda-worker"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 1\n")
    program.chmod(0o755)
    handler = fg.PortalGatewayCheck("http://127.0.0.1:9", PORTAL_API_TOKEN, gpu_worker_cmd=[str(program)])
    overrides = handler.configuration(
        decision(61, worker_gpus=1, worker_cores=8, worker_memory_gb=64, partition="gpu"),
        FrozenAttrDict({"session": 61, "worker_cores": 0, "worker_memory": 0.0}),
    )
    backend = fg.FactorySlurmBackend(
        staging_root=str(tmp_path), slurm_conf="/etc/slurm/factory.conf", api_url="http://gateway/api"
    )
    config = backend.cluster_config_class(parent=backend, **overrides)
    cluster = SimpleNamespace(
        name="c0ffee",
        username="u42",
        token="cluster-token",
        scheduler_address="tls://10.0.0.5:41234",
        config=FrozenAttrDict(config.to_dict()),
    )
    cmd, env, script = backend.get_submit_cmd_env_stdin(cluster, SimpleNamespace(name="w1"))
    assert "--gres=gpu:1" in cmd
    assert {"--job-name=dask-gw-s61", f"--account={ACCOUNT}", "--partition=gpu", "--cpus-per-task=8"} <= set(cmd)
    assert "--mem=64G" in cmd
    assert f"--chdir={tmp_path}/u42/c0ffee" in cmd
    assert env["SLURM_CONF"] == "/etc/slurm/factory.conf"
    exported = next(arg for arg in cmd if arg.startswith("--export="))
    assert exported == "--export=" + ",".join(sorted(env))
    worker_line = script.splitlines()[-1].split()
    assert worker_line[:2] == [str(program), "tls://10.0.0.5:41234"]
    assert worker_line[worker_line.index("--name") + 1] == "w1"
    assert worker_line[worker_line.index("--nthreads") + 1] == "8"
    assert env["DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT"] == f"{tmp_path}/u42/c0ffee/dask.crt"

    scheduler_cmd, _, scheduler_script = backend.get_submit_cmd_env_stdin(cluster)
    assert not any(arg.startswith("--gres") for arg in scheduler_cmd)
    assert "--job-name=dask-gw-s61" in scheduler_cmd and "--cpus-per-task=1" in scheduler_cmd
    assert "dask_gateway.scheduler_preload" in scheduler_script

    # The service account submits: directly when the gateway runs as it, through sudo otherwise.
    assert backend.launcher_command() == [backend.dask_gateway_jobqueue_launcher]
    backend.submit_user = "dask-submit"
    assert backend.launcher_command()[1:] == ["-nHu", "dask-submit", backend.dask_gateway_jobqueue_launcher]


# --- the kernel: a gateway cluster in a real notebook, the hook at stop, the fallback --------------------------------


def test_the_notebook_kernel_runs_dask_on_slurm_and_its_jobs_end_with_the_server(stack: Stack) -> None:
    session, headers = 59, {"Authorization": f"token {SERVICE_TOKEN}"}
    stack.portal.answers[session] = (200, decision(session))
    stack.portal.spawn = {
        "environment": {"PORTAL_NOTEBOOK_SESSION": str(session), "PORTAL_ALLOCATION": "17"},
        "cpu_limit": 1,
        "mem_limit": "1G",
        "gpus": 0,
    }
    hub = stack.hub
    assert requests.post(f"{hub.api_url}/users/u43", headers=headers, timeout=30).status_code in (201, 409)
    started = requests.post(
        f"{hub.api_url}/users/u43/servers/lab", headers=headers, json={"profile": "cpu"}, timeout=30
    )
    assert started.status_code in (201, 202), started.text

    def ready() -> dict[str, Any] | None:
        server = requests.get(f"{hub.api_url}/users/u43", headers=headers, timeout=30).json()["servers"].get("lab")
        return server if server and server["ready"] else None

    try:
        path = wait_for(ready, timeout=90, what="the notebook server")["url"]
        kernel = requests.post(
            f"{hub.url}{path}api/kernels", headers=headers, json={"name": "python3-dask-gpu"}, timeout=patience(120)
        )
        assert kernel.status_code == 201, kernel.text
        kernel_id = kernel.json()["id"]
        code = (
            "import json, os\n"
            # From here on only the hub's post-stop hook can end the jobs: the kernel will not shut its cluster down.
            "cluster.shutdown_on_close = False\n"
            "from dask_gateway import Gateway\n"
            "print(json.dumps({'banner': dask_banner, 'cluster': type(cluster).__name__,\n"
            # Gateway() and GatewayCluster() without arguments: the hub's configuration, the notebook's session.
            "    'default_session': Gateway().cluster_options().session,\n"
            "    'sum': client.submit(sum, [1, 2, 3]).result(),\n"
            "    'jobs': sorted(set(client.run(lambda: os.environ.get('SLURM_JOB_ID')).values()))}))\n"
        )
        # The startup file (the cluster) runs before the kernel answers its first request: a long timeout.
        seen = json.loads(run_in_kernel(hub, path, kernel_id, code, timeout=300).strip().splitlines()[-1])
        assert seen["cluster"] == "GatewayCluster", seen["banner"]
        assert seen["sum"] == 6
        assert seen["default_session"] == session
        assert (
            "Dask Gateway on the factory cluster (Slurm): 2 workers, charged to allocation 17; "
            "cluster.scale(n) / cluster.adapt(minimum=, maximum=) to resize"
        ) in seen["banner"]
        assert "This notebook server: no GPU visible." in seen["banner"]
        jobs = stack.jobs(session)
        assert len(jobs) == 3 and {job["Account"] for job in jobs} == {ACCOUNT}
        assert set(seen["jobs"]) < {job["JobId"] for job in jobs}
        assert stack.portal.gateway_checks(session)[-1]["json"] == {"user": "u43", "session": session}
    finally:
        stopped = requests.delete(f"{hub.api_url}/users/u43/servers/lab", headers=headers, timeout=60)
        assert stopped.status_code in (202, 204), stopped.text
    # The post-stop hook cancels the session's jobs (scancel --name=dask-gw-s59).
    wait_for(lambda: not stack.jobs(session), timeout=120, what="the notebook's Dask jobs to end with its server")


def test_a_refused_gateway_falls_back_to_a_local_cluster_and_says_why(stack: Stack) -> None:
    session = 60
    stack.portal.answers[session] = (403, {"detail": "Dask is not included in course allocations."})
    env = {
        **os.environ,
        **{
            name: value(SimpleNamespace(environment={"PORTAL_NOTEBOOK_SESSION": str(session)}))
            if callable(value)
            else value
            for name, value in fg.spawner_environment(
                stack.hub.url, {"HUB_DASK_GATEWAY_TCP_PORT": str(stack.tcp_port)}
            ).items()
        },
        "JUPYTERHUB_API_TOKEN": stack.token("u44"),
        "PORTAL_NOTEBOOK_SESSION": str(session),
        "PORTAL_ALLOCATION": "17",
        "CUDA_VISIBLE_DEVICES": "0,1",  # assigned, but this machine has no NVIDIA driver
        "DASK_KERNEL_N_WORKERS": "1",
        "PATH": "/usr/bin:/bin",  # no nvidia-smi, whatever the machine has
    }
    run = (
        f"import json, runpy; ns = runpy.run_path({str(STARTUP)!r}, run_name='__main__')\n"
        "print(json.dumps({'banner': ns['dask_banner'], 'cluster': type(ns['cluster']).__name__,\n"
        "    'sum': ns['client'].submit(sum, [1, 2]).result()}))\n"
        "ns['client'].close(); ns['cluster'].close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", run], env=env, capture_output=True, text=True, timeout=patience(180), check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["cluster"] == "LocalCluster" and seen["sum"] == 3
    lines = seen["banner"].splitlines()
    assert lines[0] == "Dask Gateway did not give this notebook a cluster: Dask is not included in course allocations."
    assert lines[1].startswith("Falling back to a local Dask cluster inside this notebook server")
    assert "GPUs 0,1 were assigned but none can be used here (no NVIDIA driver)" in lines[2]
    assert stack.jobs(session) == []


def test_without_the_gateway_the_kernel_starts_a_local_cluster_and_names_the_gpus_it_sees() -> None:
    startup = runpy.run_path(str(STARTUP))
    assert startup["describe_gpus"]({"CUDA_VISIBLE_DEVICES": ""}) == "no GPU visible"
    assert startup["describe_gpus"]({"CUDA_VISIBLE_DEVICES": "-1"}) == "no GPU visible"
    assert startup["describe_gpus"]({"CUDA_VISIBLE_DEVICES": "2", "PATH": "/nonexistent"}) == (
        "GPUs 2 were assigned but none can be used here (no NVIDIA driver)"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("DASK_GATEWAY")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "DASK_KERNEL_N_WORKERS": "1", "PORTAL_NOTEBOOK_SESSION": "5"})
    run = (
        f"import json, runpy; ns = runpy.run_path({str(STARTUP)!r}, run_name='__main__')\n"
        "print(json.dumps({'banner': ns['dask_banner'], 'cluster': type(ns['cluster']).__name__}))\n"
        "ns['client'].close(); ns['cluster'].close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", run], env=env, capture_output=True, text=True, timeout=patience(180), check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["cluster"] == "LocalCluster"
    assert seen["banner"].startswith("Dask LocalCluster (CPU): 1 worker, ready in ")
    assert seen["banner"].splitlines()[0].endswith(" No GPU visible.")
    assert "Gateway" not in seen["banner"]


def test_the_hub_knows_a_servers_notebook_session() -> None:
    assert fg.notebook_session(SimpleNamespace(environment={"PORTAL_NOTEBOOK_SESSION": "12"})) == 12
    assert fg.notebook_session(SimpleNamespace(environment={}, user_options={})) is None
    assert fg.session_option(SimpleNamespace(environment={"PORTAL_NOTEBOOK_SESSION": "12"})) == "12"
    assert fg.session_option(SimpleNamespace(environment={})) == "0"
