"""Dask Gateway of the Baltic AI Factory: Dask clusters as Slurm jobs, for hub users, charged to their notebook's
allocation.

    dask-gateway-server -f hub_config/dask_gateway_config.py   (the hub runs it as its service "dask-gateway")

Its environment variables are listed in factory_gateway.py; the hub passes them on (factory_gateway.hub_service),
and gives the service JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from factory_gateway import (  # noqa: E402
    BIN,
    SERVICE_NAME,
    SERVICE_PREFIX,
    FactorySlurmBackend,
    GatewaySettings,
    PortalGatewayCheck,
    cluster_options,
)

c = get_config()  # noqa: F821 - provided by dask-gateway-server when it loads this file

settings = GatewaySettings.from_env(os.environ)
settings.gateway_dir.mkdir(parents=True, exist_ok=True)
settings.staging_dir.mkdir(parents=True, exist_ok=True)
if settings.debug:
    c.DaskGateway.log_level = "DEBUG"

# --- users: the hub's tokens ---------------------------------------------------------------------------------
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = os.environ.get("JUPYTERHUB_API_URL", "")
c.JupyterHubAuthenticator.jupyterhub_api_token = os.environ.get("DASK_GATEWAY_API_TOKEN") or os.environ.get(
    "JUPYTERHUB_API_TOKEN", ""
)
# Tokens must carry access:services!service=dask-gateway (factory_gateway.hub_roles gives it to users and servers).
c.JupyterHubAuthenticator.jupyterhub_service_name = SERVICE_NAME

# --- addresses: the hub routes {HUB_PUBLIC_URL}/services/dask-gateway/ to the HTTP side ---------------------------
c.DaskGateway.address = "127.0.0.1:0"  # the private API server, behind the gateway's own proxy
c.Proxy.address = f"{settings.host}:{settings.port}"
c.Proxy.tcp_address = f"{settings.host}:{settings.tcp_port}"
c.Proxy.prefix = SERVICE_PREFIX

# --- state: SQLite under the hub's state folder, encrypted (TLS keys and tokens of running clusters) -----------------
c.FactorySlurmBackend.db_url = f"sqlite:///{settings.gateway_dir / 'gateway.sqlite'}"
if not os.environ.get("DASK_GATEWAY_ENCRYPT_KEYS"):
    key_file = settings.gateway_dir / "encrypt-key"
    with contextlib.suppress(FileExistsError):
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.urlsafe_b64encode(os.urandom(32)).decode())
    c.FactorySlurmBackend.db_encrypt_keys = [key_file.read_text().strip()]

# --- Slurm: one service account submits under the portal's accounts -----------------------------------------------
c.DaskGateway.backend_class = FactorySlurmBackend
c.FactorySlurmBackend.dask_gateway_jobqueue_launcher = str(BIN / "dask-gateway-jobqueue-launcher")
c.FactorySlurmBackend.submit_user = settings.submit_user
c.FactorySlurmBackend.staging_root = str(settings.staging_dir)
c.FactorySlurmBackend.slurm_conf = settings.slurm_conf
# Jobs may wait in the queue: give them time before the gateway gives up on a scheduler or worker.
c.FactorySlurmBackend.cluster_start_timeout = settings.start_timeout
c.FactorySlurmBackend.worker_start_timeout = settings.start_timeout
c.FactorySlurmBackend.cluster_options = cluster_options(
    PortalGatewayCheck(
        settings.portal_url,
        settings.portal_api_token,
        timeout=settings.check_timeout,
        gpu_worker_cmd=[str(BIN / "dask-cuda-worker")],
        slurm_cluster=settings.slurm_cluster,
    )
)

# --- the clusters: programs from this Python environment, which the compute nodes share ----------------------------
c.FactorySlurmClusterConfig.scheduler_cmd = [str(BIN / "dask"), "scheduler"]
c.FactorySlurmClusterConfig.worker_cmd = [str(BIN / "dask"), "worker"]
c.FactorySlurmClusterConfig.scheduler_cores = settings.scheduler_cores
c.FactorySlurmClusterConfig.scheduler_memory = settings.scheduler_memory
# A cluster that no notebook uses (no client, no task) ends, and so stops being charged.
c.FactorySlurmClusterConfig.idle_timeout = settings.idle_timeout
