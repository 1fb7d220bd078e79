"""Multi-node Dask for notebooks: Dask Gateway on the factory's Slurm, authenticated by the hub, every job
charged to the notebook's allocation.

Two processes import this module: the hub (``jupyterhub_config.py``, behind ``HUB_DASK_GATEWAY=1``: the
service entry, roles, the single-user environment and the post-stop hook) and the gateway itself
(``dask_gateway_config.py``: the Slurm backend and the cluster options). It uses only the standard library,
dask_gateway_server, traitlets and tornado; it never imports ``portal``.

How it fits together:

- The hub runs ``dask-gateway-server -f hub_config/dask_gateway_config.py`` as its managed service
  ``dask-gateway`` and routes ``{HUB_PUBLIC_URL}/services/dask-gateway/`` to it. Users authenticate with
  their JupyterHub token (``JupyterHubAuthenticator``); the token needs the scope
  ``access:services!service=dask-gateway``, which ``hub_roles()`` gives users and their servers' tokens.
- A kernel asks for a cluster with ``GatewayCluster(session=<PORTAL_NOTEBOOK_SESSION>)``. The options handler
  (``PortalGatewayCheck``) asks the portal, ``POST {PORTAL_URL}/api/v1/hub/gateway-check``, whether that user
  may run Dask for that session, and on which Slurm account, partition and worker size.
- ``FactorySlurmBackend`` submits the scheduler and every worker as Slurm jobs named ``dask-gw-s<session>``
  under the allocation's account (``--account``), as one service account (hub users are no Unix users), so
  the portal's sacct import charges them to the allocation like any other job.
- When the notebook server stops, ``stop_gateway_jobs`` (the hub's ``post_stop_hook``) cancels the session's
  jobs by name; a cluster nobody uses ends after ``HUB_DASK_GATEWAY_IDLE_TIMEOUT``.

Environment variables (the hub passes the gateway's to its service; defaults in brackets):

HUB_DASK_GATEWAY                 "1": jupyterhub_config.py runs the gateway as a hub service
HUB_DASK_GATEWAY_HOST            address the gateway's proxy listens on and that jobs and notebooks reach it at
                                 [127.0.0.1]
HUB_DASK_GATEWAY_PORT            its HTTP port: REST API, dashboards, the scheduler jobs' heartbeats [8786]
HUB_DASK_GATEWAY_TCP_PORT        its scheduler-traffic port (TLS, routed by SNI to each cluster) [8787]
HUB_DASK_GATEWAY_PROXY_ADDRESS   the scheduler proxy as notebooks reach it [gateway://HOST:TCP_PORT]
DASK_GATEWAY_API_TOKEN           the gateway's JupyterHub API token (the service's api_token) [a new random
                                 token at each hub start; the hub (re)loads service tokens from its config]
SLURM_CONF                       the Slurm cluster the jobs go to, for sbatch, squeue and scancel [the host's]
HUB_DASK_GATEWAY_SLURM_CLUSTER   that cluster's ClusterName; when set, a portal answer naming another cluster
                                 is refused [unset: not checked]
HUB_DASK_GATEWAY_SUBMIT_USER     the Unix account that submits and cancels every Dask job; another than the
                                 gateway's (and hub's) own runs through ``sudo -nHu``, which needs a sudoers rule
                                 for dask-gateway-jobqueue-launcher [the gateway's own user]
HUB_DASK_GATEWAY_STAGING_DIR     each cluster's TLS files and job logs, one folder per user and cluster; must be
                                 on a file system the compute nodes share [HUB_STATE_DIR/dask-gateway/staging]
HUB_DASK_GATEWAY_IDLE_TIMEOUT    seconds after which a cluster nobody uses is stopped [600]
HUB_DASK_GATEWAY_START_TIMEOUT   seconds a scheduler or worker job may take to start (queue wait included) [600]
HUB_DASK_GATEWAY_SCHEDULER_CORES, HUB_DASK_GATEWAY_SCHEDULER_MEMORY
                                 the scheduler job's size [1, "2 G"]
HUB_DASK_GATEWAY_CHECK_TIMEOUT   seconds the gateway waits for the portal's gateway check [5]
HUB_STATE_DIR                    the hub's state folder; the gateway keeps its database (SQLite, encrypted with
                                 a key it creates there, or DASK_GATEWAY_ENCRYPT_KEYS) under dask-gateway/
PORTAL_URL, PORTAL_HUB_SPAWN_CHECK_TOKEN
                                 the portal and the bearer token for its gateway check (as for the spawn check;
                                 PORTAL_API_TOKEN, its earlier name, still works for one release)
HUB_DEBUG                        "1": debug logging
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dask_gateway_server.backends.base import ClusterConfig
from dask_gateway_server.backends.jobqueue.slurm import SlurmBackend, SlurmClusterConfig
from dask_gateway_server.options import Float, Integer, Options
from dask_gateway_server.traitlets import Type
from portal_env import shared
from traitlets import Integer as IntegerTrait
from traitlets import Unicode, default

log = logging.getLogger("factory_gateway")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The Python environment of the hub, the gateway, the notebooks and the Dask jobs.
BIN = Path(sys.executable).parent

SERVICE_NAME = "dask-gateway"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}"
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
GATEWAY_CHECK_PATH = "/api/v1/hub/gateway-check"
UNAVAILABLE_MESSAGE = (
    "The portal could not confirm this notebook's allocation for Dask right now; please try again later."
)
#: Variables of the hub's environment that the gateway service gets (besides the HUB_DASK_GATEWAY_* ones).
PASSED_TO_SERVICE = (
    "SLURM_CONF",
    "PORTAL_URL",
    "PORTAL_HUB_SPAWN_CHECK_TOKEN",
    "PORTAL_API_TOKEN",
    "DASK_GATEWAY_ENCRYPT_KEYS",
    "HUB_DEBUG",
    "TZ",
)


def job_name(session: int | str) -> str:
    """The Slurm job name of every Dask job of a notebook session (scheduler and workers)."""
    return f"dask-gw-s{int(session)}"


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _env(env: Mapping[str, str], name: str, fallback: str = "") -> str:
    return env.get(name, "") or fallback


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's settings from the environment, read the same way by the hub and by the gateway."""

    state_dir: Path
    host: str
    port: int
    tcp_port: int
    proxy_address: str
    slurm_conf: str
    slurm_cluster: str
    submit_user: str
    staging_dir: Path
    idle_timeout: float
    start_timeout: float
    scheduler_cores: int
    scheduler_memory: str
    check_timeout: float
    portal_url: str
    portal_api_token: str
    debug: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, state_dir: Path | str | None = None) -> GatewaySettings:
        state = Path(state_dir or _env(env, "HUB_STATE_DIR", str(REPO / "instance" / "hub"))).resolve()
        host = _env(env, "HUB_DASK_GATEWAY_HOST", "127.0.0.1")
        tcp_port = int(_env(env, "HUB_DASK_GATEWAY_TCP_PORT", "8787"))
        return cls(
            state_dir=state,
            host=host,
            port=int(_env(env, "HUB_DASK_GATEWAY_PORT", "8786")),
            tcp_port=tcp_port,
            proxy_address=_env(env, "HUB_DASK_GATEWAY_PROXY_ADDRESS", f"gateway://{_reachable(host)}:{tcp_port}"),
            slurm_conf=_env(env, "SLURM_CONF"),
            slurm_cluster=_env(env, "HUB_DASK_GATEWAY_SLURM_CLUSTER"),
            submit_user=_env(env, "HUB_DASK_GATEWAY_SUBMIT_USER", current_user()),
            staging_dir=Path(_env(env, "HUB_DASK_GATEWAY_STAGING_DIR", str(state / "dask-gateway" / "staging"))),
            idle_timeout=float(_env(env, "HUB_DASK_GATEWAY_IDLE_TIMEOUT", "600")),
            start_timeout=float(_env(env, "HUB_DASK_GATEWAY_START_TIMEOUT", "600")),
            scheduler_cores=int(_env(env, "HUB_DASK_GATEWAY_SCHEDULER_CORES", "1")),
            scheduler_memory=_env(env, "HUB_DASK_GATEWAY_SCHEDULER_MEMORY", "2 G"),
            check_timeout=float(_env(env, "HUB_DASK_GATEWAY_CHECK_TIMEOUT", "5")),
            portal_url=_env(env, "PORTAL_URL", "http://127.0.0.1:5000").rstrip("/"),
            portal_api_token=shared("PORTAL_HUB_SPAWN_CHECK_TOKEN", env=env),
            debug=_env(env, "HUB_DEBUG") == "1",
        )

    @property
    def gateway_dir(self) -> Path:
        return self.state_dir / "dask-gateway"

    @property
    def url(self) -> str:
        """Where the hub's proxy (and the scheduler jobs' heartbeats) reach the gateway's HTTP side."""
        return f"http://{_reachable(self.host)}:{self.port}"


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104 - a listen address, mapped to a reachable one


# --- the portal's gateway check (the cluster options handler) ----------------------------------------------


class GatewayRefused(ValueError):
    """The cluster is refused; the message is shown to the user (dask-gateway answers 422 with it)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is no answer of the portal's API: it fails as "could not confirm"


class PortalGatewayCheck:
    """The cluster options handler: asks the portal whether ``user`` may run Dask for ``options.session``.

    ``POST {portal_url}/api/v1/hub/gateway-check`` with ``Authorization: Bearer <api_token>`` and
    ``{"user": "u42", "session": 55}``.

    - 200 ``{"session", "allocation", "cluster", "account", "partition", "worker_gpus", "worker_cores",
      "worker_memory_gb", "max_workers"}``: the cluster's configuration (account, partition, worker size and
      count; GPU workers run ``gpu_worker_cmd`` with ``worker_gpus`` GPUs each).
    - 4xx (other than 401), ``application/problem+json``: refused with the portal's ``detail``.
    - 401, 5xx, anything else, unreachable, too slow: refused with "the portal could not confirm ...".

    The handler is synchronous (dask-gateway calls it inside its event loop), so the request uses urllib with
    a short timeout: while it waits, the gateway serves no other request.
    """

    def __init__(
        self,
        portal_url: str,
        api_token: str,
        *,
        timeout: float = 5.0,
        gpu_worker_cmd: list[str] | None = None,
        slurm_cluster: str = "",
    ) -> None:
        self.url = portal_url.rstrip("/") + GATEWAY_CHECK_PATH
        self.api_token = api_token
        self.timeout = timeout
        self.gpu_worker_cmd = list(gpu_worker_cmd or [str(BIN / "dask-cuda-worker")])
        self.slurm_cluster = slurm_cluster
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __call__(self, options: Mapping[str, Any], user: Any) -> dict[str, Any]:
        session = int(options.get("session") or 0)
        if session <= 0:
            raise GatewayRefused(
                "Dask Gateway clusters belong to a notebook: pass session=<PORTAL_NOTEBOOK_SESSION> "
                "(the notebook's environment has it)."
            )
        decision = self.check(user.name, session)
        return self.configuration(decision, options)

    def check(self, user: str, session: int) -> dict[str, Any]:
        """The portal's 200 answer, or GatewayRefused."""
        request = urllib.request.Request(  # noqa: S310 - the portal's URL, from the gateway's configuration
            self.url,
            data=json.dumps({"user": user, "session": session}).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.api_token}",
                "Content-Type": "application/json",
                "Accept": "application/json, application/problem+json",
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (OSError, ValueError) as exc:  # unreachable, reset, timed out (URLError is an OSError)
            log.warning("gateway check for %s, session %s, at %s failed: %r", user, session, self.url, exc)
            raise GatewayRefused(UNAVAILABLE_MESSAGE) from exc
        payload = _json(body)
        if status == 401 or status >= 500 or not 200 <= status < 500:
            log.warning("gateway check for %s, session %s: the portal answered %s", user, session, status)
            raise GatewayRefused(UNAVAILABLE_MESSAGE)
        if status >= 400:
            detail = payload.get("detail") if isinstance(payload, dict) else None
            raise GatewayRefused(_one_line(str(detail)) if detail else "The portal refused Dask for this notebook.")
        if status != 200 or not isinstance(payload, dict) or not payload.get("account"):
            log.warning("gateway check for %s, session %s: unexpected answer %s %r", user, session, status, payload)
            raise GatewayRefused(UNAVAILABLE_MESSAGE)
        return payload

    def configuration(self, decision: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """The cluster configuration (FactorySlurmClusterConfig's traits) for the portal's answer."""
        if self.slurm_cluster and decision.get("cluster") and decision["cluster"] != self.slurm_cluster:
            raise GatewayRefused(
                f"This notebook's allocation runs on the Slurm cluster {decision['cluster']}; "
                f"this Dask Gateway submits to {self.slurm_cluster}."
            )
        try:
            cores_allowed = int(decision.get("worker_cores") or 1)
            memory_allowed = float(decision.get("worker_memory_gb") or 1)
            gpus = int(decision.get("worker_gpus") or 0)
            max_workers = int(decision.get("max_workers") or 0)
        except (TypeError, ValueError) as exc:
            log.warning("gateway check: unexpected answer %r", decision)
            raise GatewayRefused(UNAVAILABLE_MESSAGE) from exc
        if gpus > 1:
            # dask-cuda-worker starts one Dask worker per GPU it sees, named <name>-0, <name>-1, ...: the gateway
            # would not recognise them as the worker it started, and would stop the job as failed.
            raise GatewayRefused(
                f"The portal asked for {gpus} GPUs per Dask worker; Dask Gateway runs one GPU per worker "
                "(scale the cluster to use more GPUs)."
            )
        if gpus and shutil.which(self.gpu_worker_cmd[0]) is None:
            # Refused at once, in words, rather than GPU worker jobs that fail one after another.
            raise GatewayRefused(
                "GPU Dask workers run dask-cuda, which is not installed in this cluster's Python environment; "
                "ask the factory's operators to install it (hub_config/README.md lists the GPU packages)."
            )
        cores = int(options.get("worker_cores") or 0) or cores_allowed
        memory_gb = float(options.get("worker_memory") or 0) or memory_allowed
        if cores > cores_allowed:
            raise GatewayRefused(f"This allocation allows at most {cores_allowed} cores per Dask worker.")
        if memory_gb > memory_allowed:
            raise GatewayRefused(f"This allocation allows at most {memory_allowed:g} GiB per Dask worker.")
        configuration: dict[str, Any] = {
            "session": int(options.get("session") or 0),  # the hub's post-stop hook cancels the jobs by this id
            "account": str(decision["account"]),
            "partition": str(decision.get("partition") or ""),
            "worker_cores": cores,
            "worker_memory": int(memory_gb * 2**30),
            "cluster_max_workers": max_workers,
            "worker_gpus": gpus,
        }
        if gpus:
            # dask-gateway's supported way to run another worker program: the cluster config's worker_cmd, to which
            # the backend appends the scheduler address, --name, --nthreads and --memory-limit (which
            # dask-cuda-worker accepts, reading the TLS settings from the job's DASK_DISTRIBUTED__COMM__TLS__*).
            configuration["worker_cmd"] = list(self.gpu_worker_cmd)
        return configuration


class _SessionField(Integer):
    """An integer field that also takes digits as a string (``session=os.environ["PORTAL_NOTEBOOK_SESSION"]``)."""

    def validate(self, x: Any) -> Any:
        if isinstance(x, str) and x.strip().isdigit():
            x = int(x.strip())
        return super().validate(x)


def cluster_options(handler: PortalGatewayCheck) -> Options:
    """The options users may pass (``GatewayCluster(session=55, worker_cores=2)``), checked by the portal."""
    return Options(
        _SessionField("session", default=0, min=0, label="Notebook session (PORTAL_NOTEBOOK_SESSION)"),
        Integer("worker_cores", default=0, min=0, max=256, label="Cores per worker (0: the allocation's size)"),
        Float("worker_memory", default=0, min=0, max=4096, label="Memory per worker, GiB (0: the allocation's size)"),
        handler=handler,
    )


# --- the Slurm backend ---------------------------------------------------------------------------------------


class FactorySlurmClusterConfig(SlurmClusterConfig):
    """SlurmClusterConfig plus what the portal's check decides beyond Slurm's own options."""

    session = IntegerTrait(0, min=0, help="The portal's notebook session; names the jobs.", config=True)
    worker_gpus = IntegerTrait(0, min=0, help="GPUs per worker job (--gres=gpu:N).", config=True)


class FactorySlurmBackend(SlurmBackend):
    """dask-gateway's SlurmBackend, submitting as one service account under the portal's Slurm accounts."""

    cluster_config_class = Type(
        FactorySlurmClusterConfig,
        klass=ClusterConfig,
        help="The cluster config class to use",
        config=True,
    )
    submit_user = Unicode(help="The Unix account that submits and cancels every Dask job.", config=True)
    staging_root = Unicode(help="Folder of the clusters' staging folders (TLS files, job logs).", config=True)
    slurm_conf = Unicode(help="SLURM_CONF for sbatch, squeue and scancel (empty: the host's).", config=True)

    @default("submit_user")
    def _default_submit_user(self) -> str:
        return current_user()

    @default("slurm_conf")
    def _default_slurm_conf(self) -> str:
        return os.environ.get("SLURM_CONF", "")

    def launcher_command(self) -> list[str]:
        return launcher_argv(self.submit_user, self.dask_gateway_jobqueue_launcher)

    # Hub users (u42) are no Unix users: one service account submits every job, directly when the gateway runs as it.
    async def do_as_user(self, user: str, action: str, **kwargs: Any) -> tuple[int, str, str]:
        kwargs["action"] = action
        proc = await asyncio.create_subprocess_exec(
            *self.launcher_command(),
            env={},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(json.dumps(kwargs).encode("utf8"))
        stdout, stderr = out.decode("utf8", "replace"), err.decode("utf8", "replace")
        if proc.returncode != 0:
            raise Exception(  # the same error the upstream method raises
                "Error running `dask-gateway-jobqueue-launcher`\n"
                f"  returncode: {proc.returncode}\n  stdout: {stdout}\n  stderr: {stderr}"
            )
        result = json.loads(stdout)
        if not result["ok"]:
            raise Exception(result["error"])
        return result["returncode"], result["stdout"], result["stderr"]

    # The upstream folder is under ~user (a pwd lookup, which fails for u42): one folder per user under staging_root.
    def get_staging_directory(self, cluster: Any) -> str:
        return os.path.join(self.staging_root, _safe(cluster.username), cluster.name)

    # Jobs named dask-gw-s<session> (the hub cancels them by name), GPU workers with --gres, SLURM_CONF for sbatch.
    def get_submit_cmd_env_stdin(self, cluster: Any, worker: Any = None) -> tuple[list[str], dict[str, str], str]:
        cmd, env, script = super().get_submit_cmd_env_stdin(cluster, worker)
        env = {**env, **self._slurm_env()}
        name = job_name(cluster.config.get("session") or 0)
        gpus = int(cluster.config.get("worker_gpus") or 0)
        out = []
        for arg in cmd:
            if arg == "--job-name=dask-gateway":
                arg = f"--job-name={name}"
            elif arg.startswith("--export="):
                arg = "--export=" + ",".join(sorted(env))
            out.append(arg)
        if worker is not None and gpus > 0:
            out.append(f"--gres=gpu:{gpus}")
        return out, env, script

    # scancel runs in the launcher with this environment only: it must find the same Slurm cluster.
    def get_stop_cmd_env(self, job_id: str) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().get_stop_cmd_env(job_id)
        return cmd, {**env, **self._slurm_env()}

    # squeue runs with this environment only: it must find the same Slurm cluster.
    def get_status_cmd_env(self, job_ids: list[str]) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().get_status_cmd_env(job_ids)
        return cmd, {**env, **self._slurm_env()}

    def _slurm_env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}


def launcher_argv(submit_user: str, launcher: str) -> list[str]:
    """dask-gateway-jobqueue-launcher as ``submit_user``: directly when this process runs as that user."""
    if submit_user == current_user():
        return [launcher]
    return [shutil.which("sudo") or "sudo", "-nHu", submit_user, launcher]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


# --- the hub's side --------------------------------------------------------------------------------------------


def hub_service(
    env: Mapping[str, str] = os.environ, *, state_dir: Path | str | None = None, portal_url: str | None = None
) -> dict[str, Any]:
    """The JupyterHub service entry that runs the gateway (``c.JupyterHub.services.append(...)``)."""
    settings = GatewaySettings.from_env(env, state_dir=state_dir)
    settings.gateway_dir.mkdir(parents=True, exist_ok=True)
    token = _env(env, "DASK_GATEWAY_API_TOKEN") or secrets.token_hex(32)
    environment = {name: env[name] for name in PASSED_TO_SERVICE if env.get(name)}
    environment.update({name: value for name, value in env.items() if name.startswith("HUB_DASK_GATEWAY_")})
    environment["HUB_STATE_DIR"] = str(settings.state_dir)
    if portal_url:
        environment["PORTAL_URL"] = portal_url
    # JupyterHub gives its managed services JUPYTERHUB_API_TOKEN (this token), JUPYTERHUB_API_URL and
    # JUPYTERHUB_SERVICE_NAME, and keeps PATH; the rest of its environment is not passed on.
    return {
        "name": SERVICE_NAME,
        "url": settings.url,
        "api_token": token,
        "command": [str(BIN / "dask-gateway-server"), "-f", str(HERE / "dask_gateway_config.py")],
        "cwd": str(settings.gateway_dir),
        "environment": environment,
        "display": False,  # an API, not a page: not in the hub's Services menu
    }


def hub_roles() -> list[dict[str, Any]]:
    """Roles for ``c.JupyterHub.load_roles``: users, and their servers' tokens, may use the gateway.

    They redefine JupyterHub's default roles ``user`` (``self``) and ``server`` (``users:activity!user``,
    ``access:servers!server``), adding the gateway's access scope; the gateway needs no scope of its own (it
    only asks the hub who a user's token belongs to).
    """
    return [
        {"name": "user", "scopes": ["self", ACCESS_SCOPE]},
        {"name": "server", "scopes": ["users:activity!user", "access:servers!server", ACCESS_SCOPE]},
    ]


def spawner_environment(public_hub_url: str, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Variables for single-user servers: dask_gateway's configuration (``Gateway()`` with no arguments).

    ``DASK_GATEWAY__CLUSTER__OPTIONS__SESSION`` is a callable (JupyterHub calls it with the spawner when the
    server starts, after the portal's spawn check): the notebook's session as a number, so that
    ``GatewayCluster()`` and ``Gateway().cluster_options()`` without arguments ask for the notebook's own session.
    """
    settings = GatewaySettings.from_env(env)
    address = public_hub_url.rstrip("/") + SERVICE_PREFIX
    return {
        "DASK_GATEWAY__ADDRESS": address,
        "DASK_GATEWAY__PUBLIC_ADDRESS": address,
        "DASK_GATEWAY__PROXY_ADDRESS": settings.proxy_address,
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        "DASK_GATEWAY__CLUSTER__OPTIONS__SESSION": session_option,
    }


def session_option(spawner: Any) -> str:
    """The notebook's session for dask's configuration (parsed as a number); 0, which the gateway refuses, when
    the server has none."""
    return str(notebook_session(spawner) or 0)


def notebook_session(spawner: Any) -> int | None:
    """The portal's notebook session of a spawner: set in its environment by the portal's spawn check."""
    for source in (getattr(spawner, "environment", None), getattr(spawner, "user_options", None)):
        if isinstance(source, Mapping):
            value = source.get("PORTAL_NOTEBOOK_SESSION") or source.get("session")
            if isinstance(value, int | str) and str(value).strip().isdigit() and int(value) > 0:
                return int(value)
    return None


async def stop_gateway_jobs(spawner: Any, env: Mapping[str, str] | None = None, timeout: float = 15) -> bool:
    """``c.Spawner.post_stop_hook``: cancel the notebook session's Dask jobs (``scancel --name=dask-gw-s<id>``).

    scancel runs as the submit user through dask-gateway-jobqueue-launcher, as the gateway's own sbatch and scancel
    do (directly, or with ``sudo -nHu``: one sudoers rule for both; the launcher passes SLURM_CONF on, which sudo
    would drop). Returns whether scancel succeeded (False also when the spawner has no session). Never raises: a
    failure is logged, and the gateway's idle timeout still ends the cluster.
    """
    env = os.environ if env is None else env
    logger = getattr(spawner, "log", log)
    session = notebook_session(spawner)
    if session is None:
        return False
    submit_user = _env(env, "HUB_DASK_GATEWAY_SUBMIT_USER", current_user())
    scancel = shutil.which("scancel", path=env.get("PATH")) or "scancel"
    request = {
        "action": "stop",
        "cmd": [scancel, f"--name={job_name(session)}", f"--user={submit_user}"],
        "env": {"SLURM_CONF": env["SLURM_CONF"]} if env.get("SLURM_CONF") else {},
    }
    argv = launcher_argv(submit_user, str(BIN / "dask-gateway-jobqueue-launcher"))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env={},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            logger.warning("cancelling the Dask jobs of session %s timed out after %s s", session, timeout)
            return False
    except OSError as exc:
        logger.warning("could not cancel the Dask jobs of session %s: %r", session, exc)
        return False
    result = _json(out)
    if proc.returncode != 0 or not isinstance(result, dict) or not result.get("ok") or result.get("returncode"):
        said = (result.get("stderr") or result.get("error")) if isinstance(result, dict) else None
        logger.warning(
            "cancelling the Dask jobs of session %s failed: %s",
            session,
            (said or err.decode(errors="replace") or f"exit status {proc.returncode}").strip(),
        )
        return False
    logger.info("cancelled the Dask jobs of notebook session %s (%s)", session, job_name(session))
    return True


def _json(body: bytes | None) -> Any:
    try:
        return json.loads((body or b"").decode("utf-8", "replace"))
    except ValueError:
        return None


def _one_line(text: str) -> str:
    """dask-gateway sends the refusal as an HTTP reason, which may not contain a line break."""
    return " ".join(text.split())
