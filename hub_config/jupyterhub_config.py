"""JupyterHub configuration of the Baltic AI Factory: users log in through the portal, which also decides
who may start what.

    jupyterhub -f hub_config/jupyterhub_config.py      (portal_standin.devhub's HubProcess does this)

Everything is read from environment variables:

PORTAL_URL                  the portal's base URL (default http://127.0.0.1:5000): OAuth2 authorize/token/
                            userinfo endpoints and the spawn check at /api/v1/hub/spawn-check
PORTAL_HUB_OAUTH_CLIENT_ID  the hub's OAuth2 client at the portal (default "jupyterhub")
PORTAL_HUB_OAUTH_CLIENT_SECRET
                            its secret
PORTAL_HUB_OAUTH_REDIRECT_URI
                            the hub's OAuth2 callback (default {HUB_PUBLIC_URL}/hub/oauth_callback)
HUB_IP, HUB_PORT            where the proxy serves users (default 127.0.0.1:8000)
HUB_PUBLIC_URL              the URL users reach the hub at (default http://{HUB_IP}:{HUB_PORT})
HUB_API_PORT                the hub's own port behind the proxy (default 8081)
HUB_PROXY_API_PORT          configurable-http-proxy's API port (default 8001)
PORTAL_HUB_SPAWN_CHECK_TOKEN
                            the bearer token the hub sends to the portal's spawn check
PORTAL_HUB_API_TOKEN        the API token of the hub service "portal" (the portal calls the hub with it)
HUB_STATE_DIR               database, cookie secret, users' homes, Dask scratch (default ./instance/hub)
HUB_CULL_IDLE_SECONDS       idle servers are stopped and removed after this many seconds (default 3600; 0: off)
HUB_CULL_EVERY_SECONDS      how often the culler looks for idle servers (default: half of HUB_CULL_IDLE_SECONDS)
HUB_SPAWN_CHECK_TIMEOUT     seconds the hub waits for the portal's spawn check (default 10)
HUB_DEBUG                   "1": debug logging
HUB_DASK_GATEWAY            "1": run Dask Gateway as the hub service "dask-gateway": notebooks' Dask clusters are
                            Slurm jobs on the notebook's allocation (its variables: factory_gateway.py)
HUB_SPAWNER                 "local" (default): servers are processes on this machine (SimpleLocalProcessSpawner,
                            homes under HUB_STATE_DIR/homes; the portal meters them); "slurm": servers are
                            Slurm jobs on the factory cluster (slurm_spawner.FactorySlurmSpawner; charged from
                            sacct), configured by:
PORTAL_HUB_SLURM_CLUSTER    the cluster's name, as in the portal's slurm_clusters (required with "slurm")
HUB_SLURM_HOME_ROOT         users' homes on the shared file system: {root}/{username} (default /home/hub)
HUB_SLURM_SUBMIT_USER       the login that submits jobs, the cluster's notebook_user (default: the hub's user)
HUB_SLURM_SERVER_IP         the address servers listen on in the job (default 0.0.0.0)
HUB_SLURM_START_TIMEOUT     seconds a job may wait in the queue and start (default 300)
SLURM_CONF                  the cluster's slurm.conf, when not the host's default

The PORTAL_HUB_* variables are the portal's settings of the same names (docs/settings.md): give both the same
values. The hub's earlier names for them (HUB_OAUTH_CLIENT_ID, HUB_OAUTH_CLIENT_SECRET, HUB_OAUTH_CALLBACK_URL,
PORTAL_API_TOKEN, HUB_PORTAL_SERVICE_TOKEN, HUB_SLURM_CLUSTER) still work for one release, logging that they
are deprecated (portal_env.py).

With "local", the GPUs this machine has (nvidia-smi) are reported with each spawn check: the portal refuses
GPU profiles they cannot serve. KubeSpawner and Dask Gateway are documented in hub_config/README.md.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from course_materials import clone_course_materials  # noqa: E402
from first_notebook import place_first_notebook  # noqa: E402
from portal_env import shared  # noqa: E402
from portal_spawn import PortalSpawnCheck  # noqa: E402

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, "") or default


portal_url = env("PORTAL_URL", "http://127.0.0.1:5000").rstrip("/")
hub_ip = env("HUB_IP", "127.0.0.1")
hub_port = int(env("HUB_PORT", "8000"))
public_url = env("HUB_PUBLIC_URL", f"http://{hub_ip}:{hub_port}").rstrip("/")
state_dir = Path(env("HUB_STATE_DIR", str(REPO / "instance" / "hub"))).resolve()
state_dir.mkdir(parents=True, exist_ok=True)

# --- the hub, its database and the proxy --------------------------------------------------------------
c.JupyterHub.bind_url = f"http://{hub_ip}:{hub_port}/"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(env("HUB_API_PORT", "8081"))
c.JupyterHub.db_url = f"sqlite:///{state_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state_dir / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state_dir / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
c.ConfigurableHTTPProxy.pid_file = str(state_dir / "jupyterhub-proxy.pid")
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(env('HUB_PROXY_API_PORT', '8001'))}"
local_chp = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
c.ConfigurableHTTPProxy.command = [
    str(local_chp) if local_chp.exists() else shutil.which("configurable-http-proxy") or "configurable-http-proxy"
]
if env("HUB_DEBUG") == "1":
    c.JupyterHub.log_level = "DEBUG"
    c.Spawner.debug = True

# --- login through the portal (OAuth2) ------------------------------------------------------------------
c.JupyterHub.authenticator_class = "generic-oauth"
c.GenericOAuthenticator.client_id = shared("PORTAL_HUB_OAUTH_CLIENT_ID", "jupyterhub")
c.GenericOAuthenticator.client_secret = shared("PORTAL_HUB_OAUTH_CLIENT_SECRET")
c.GenericOAuthenticator.oauth_callback_url = shared("PORTAL_HUB_OAUTH_REDIRECT_URI", f"{public_url}/hub/oauth_callback")
c.GenericOAuthenticator.authorize_url = f"{portal_url}/oauth/authorize"
c.GenericOAuthenticator.token_url = f"{portal_url}/oauth/token"
c.GenericOAuthenticator.userdata_url = f"{portal_url}/oauth/userinfo"
c.GenericOAuthenticator.scope = ["openid", "profile"]
c.GenericOAuthenticator.username_claim = "name"
c.GenericOAuthenticator.login_service = "Baltic AI Factory portal"
# Whoever the portal logs in may use the hub: what they may start is checked per spawn (below).
c.GenericOAuthenticator.allow_all = True
c.Authenticator.auto_login = True

# --- single-user servers ---------------------------------------------------------------------------------
spawner_kind = env("HUB_SPAWNER", "local")
if spawner_kind not in ("local", "slurm"):
    raise SystemExit(f"HUB_SPAWNER must be 'local' or 'slurm', not {spawner_kind!r}")
c.JupyterHub.allow_named_servers = True
# The portal's metering lists every active server once a round: 1,000 users a page (JupyterHub's default is 200)
# reads 10,000 servers in 10 requests instead of 50 (portal/compute/hub_client.py asks for LIST_PAGE).
c.JupyterHub.api_page_max_limit = 1000
c.JupyterHub.named_server_limit_per_user = 5
c.Spawner.cmd = [str(Path(sys.executable).parent / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
# New notebooks (and kernels started without a name) get the "Python 3 (Dask GPU)" kernel.
c.Spawner.args = ["--MultiKernelManager.default_kernel_name=python3-dask-gpu"]
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
if os.geteuid() == 0:
    c.Spawner.args = [*c.Spawner.args, "--ServerApp.allow_root=True"]

if spawner_kind == "slurm":
    from slurm_spawner import FactorySlurmSpawner

    slurm_cluster = shared("PORTAL_HUB_SLURM_CLUSTER")
    if not slurm_cluster:
        raise SystemExit("HUB_SPAWNER=slurm needs PORTAL_HUB_SLURM_CLUSTER (the cluster's name in the portal)")
    c.JupyterHub.spawner_class = FactorySlurmSpawner
    c.FactorySlurmSpawner.cluster_name = slurm_cluster
    c.FactorySlurmSpawner.home_root = env("HUB_SLURM_HOME_ROOT", "/home/hub")
    if env("HUB_SLURM_SUBMIT_USER"):
        c.FactorySlurmSpawner.submit_user = env("HUB_SLURM_SUBMIT_USER")
    c.FactorySlurmSpawner.ip = env("HUB_SLURM_SERVER_IP", "0.0.0.0")  # noqa: S104 - compute nodes serve the hub
    c.Spawner.start_timeout = int(env("HUB_SLURM_START_TIMEOUT", "300"))  # queue wait included
    spawn_backend: dict | None = {"kind": "slurm", "cluster": slurm_cluster}
else:
    c.JupyterHub.spawner_class = "simple"  # SimpleLocalProcessSpawner
    c.SimpleLocalProcessSpawner.home_dir_template = str(state_dir / "homes" / "{username}")
    spawn_backend = None  # PortalSpawnCheck reports this machine's GPUs


def _dask_scratch(spawner) -> str:
    if spawner_kind == "slurm":  # in the user's home on the shared file system, which the job can write
        path = Path(spawner.req_homedir) / ".dask-scratch" / (spawner.name or "default")
    else:
        path = state_dir / "dask-scratch" / spawner.user.name / (spawner.name or "default")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


c.Spawner.environment = {
    # hub_config/kernels/python3-dask-gpu: the "Python 3 (Dask GPU)" kernel
    "JUPYTER_PATH": str(HERE),
    "DASK_TEMPORARY_DIRECTORY": _dask_scratch,
    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
}

# Every spawn, from the portal or from the hub's own pages, is checked by the portal first.
c.Spawner.apply_user_options = PortalSpawnCheck(
    portal_url,
    shared("PORTAL_HUB_SPAWN_CHECK_TOKEN"),
    timeout=float(env("HUB_SPAWN_CHECK_TIMEOUT", "10")),
    backend=spawn_backend,
)


async def prepare_home(spawner) -> None:
    """At the first start, the first notebook (the server opens on it) and a course's materials (a git
    repository) are put in the user's home; later starts leave the home as its owner left it."""
    place_first_notebook(spawner)
    await clone_course_materials(spawner)


c.Spawner.pre_spawn_hook = prepare_home

# The hub's pages (hub_config/templates) lead back to the portal.
c.JupyterHub.template_paths = [str(HERE / "templates")]
c.JupyterHub.template_vars = {"portal_url": portal_url}
# The start request returns (202) after 3 s at most instead of JupyterHub's 10: the portal's session page then
# shows the start's progress. The spawn check runs first, so its refusal still comes back with the request.
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 3}

# --- services: the portal and the idle culler --------------------------------------------------------------
services: list[dict] = []
roles: list[dict] = []
portal_service_token = shared("PORTAL_HUB_API_TOKEN")
if portal_service_token:
    services.append({"name": "portal", "api_token": portal_service_token})
    roles.append(
        {
            "name": "portal",
            "scopes": ["admin:users", "start:servers", "delete:servers", "read:servers", "access:servers"],
            "services": ["portal"],
        }
    )
cull_seconds = int(env("HUB_CULL_IDLE_SECONDS", "3600"))
if cull_seconds > 0:
    services.append(
        {
            "name": "idle-culler",
            "command": [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={cull_seconds}",
                f"--cull-every={int(env('HUB_CULL_EVERY_SECONDS', str(max(1, cull_seconds // 2))))}",
                # A culled named server is removed, so that it does not count against named_server_limit_per_user.
                "--remove-named-servers=True",
            ],
        }
    )
    roles.append(
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    )
# --- Dask Gateway: multi-node Dask on Slurm, charged to the notebook's allocation (factory_gateway.py) ------------
if env("HUB_DASK_GATEWAY") == "1":
    import factory_gateway

    services.append(factory_gateway.hub_service(os.environ, state_dir=state_dir, portal_url=portal_url))
    roles.extend(factory_gateway.hub_roles())
    c.Spawner.environment.update(factory_gateway.spawner_environment(public_url))
    # A notebook's Dask jobs end with it, even when its kernel could not shut its cluster down.
    c.Spawner.post_stop_hook = factory_gateway.stop_gateway_jobs

c.JupyterHub.services = services
c.JupyterHub.load_roles = roles
