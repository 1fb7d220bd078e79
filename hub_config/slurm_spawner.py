"""Notebook servers as Slurm jobs on the factory cluster: a thin subclass of batchspawner's SlurmSpawner.

Selected in jupyterhub_config.py with ``HUB_SPAWNER=slurm``. The portal's spawn check decides the job (see
``portal_spawn.apply_decision``): ``--account`` (the allocation's account, made by ``portal slurm sync``),
``--partition`` (the resource's), ``--gres=gpu:N``, ``--cpus-per-task``, ``--mem``, ``--time`` (the hours asked
for) and ``--job-name=portal-nb-<session id>``. Nothing is submitted without that answer, so no job runs
uncharged: the job is charged once, from sacct, by the portal's ``pull-sacct``.

batchspawner 1.3.0 (2024) predates JupyterHub 6; checked against 6.1: its ``/hub/api/batchspawner`` handler
(through which ``batchspawner-singleuser`` reports the server's port) still registers and works, and its
start/poll/stop cycle is unchanged. What this subclass adapts, and why:

- hub users are portal identities (``u42``), not Unix accounts: the jobs are submitted by one service login
  (``submit_user``, which ``portal slurm sync`` adds to every account as the cluster's ``notebook_user``),
  without ``sudo`` when the hub already runs as it; homes are ``{home_root}/{username}`` on the shared file
  system instead of ``pwd.getpwnam(username)``, and ``USER``/``HOME`` are set without a passwd lookup;
- the batch script takes its account, partition and sizes from the portal's decision, not from config;
- ``CUDA_VISIBLE_DEVICES`` is Slurm's (the GPUs the job holds), never the hub's.
"""

from __future__ import annotations

import getpass
import os
import shlex
from pathlib import Path
from typing import Any

from batchspawner import SlurmSpawner
from traitlets import Unicode, default

try:  # JupyterHub 6.0+
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover
    SpawnException = RuntimeError

BATCH_SCRIPT = """#!/bin/bash
#SBATCH --job-name={{job_name}}
#SBATCH --account={{account}}
#SBATCH --output={{homedir}}/.portal-jobs/slurm-%j.log
#SBATCH --chdir={{homedir}}
#SBATCH --export={{keepvars}}
#SBATCH --cpus-per-task={{nprocs}}
#SBATCH --mem={{memory}}
#SBATCH --time={{runtime}}
{% if partition %}#SBATCH --partition={{partition}}
{% endif %}{% if ngpus %}#SBATCH --gres=gpu:{{ngpus}}
{% endif %}
set -euo pipefail
trap 'echo "SIGTERM received: the notebook server stops"' TERM
{{prologue}}
{% if srun %}{{srun}} {% endif %}{{cmd}}
{{epilogue}}
"""

NO_DECISION = "The portal did not say which Slurm account this server runs under, so it was not started."


class FactorySlurmSpawner(SlurmSpawner):
    """SlurmSpawner whose job is the portal's decision (see the module's docstring)."""

    batch_script = Unicode(BATCH_SCRIPT).tag(config=True)

    cluster_name = Unicode(
        "", help="The Slurm cluster's name, reported to the portal with each spawn check (ClusterName)."
    ).tag(config=True)

    home_root = Unicode(
        "/home/hub", help="Users' homes are {home_root}/{username} on the file system the compute nodes share."
    ).tag(config=True)

    submit_user = Unicode(
        help="The login that submits the jobs (the cluster's notebook_user in the portal); default: the hub's own."
    ).tag(config=True)

    @default("submit_user")
    def _default_submit_user(self) -> str:
        return getpass.getuser()

    @default("exec_prefix")
    def _default_exec_prefix(self) -> str:
        # The hub itself is the submitting login (the usual deployment): no sudo needed, and none is installed.
        return "" if self.submit_user == getpass.getuser() else "sudo -E -u {{username}}"

    @default("req_username")
    def _req_username_default(self) -> str:
        return self.submit_user

    @default("req_homedir")
    def _req_homedir_default(self) -> str:
        return str(Path(self.home_root) / self.user.name)

    #: The portal's decision's ``slurm`` part (set by ``portal_spawn.apply_decision`` before each start).
    portal_slurm: dict[str, Any] | None = None

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        # UserEnvMixin looks the hub user up in passwd, where portal identities do not exist.
        env["USER"] = self.submit_user
        env["HOME"] = self.req_homedir
        env["SHELL"] = "/bin/bash"
        return env

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.pop("CUDA_VISIBLE_DEVICES", None)  # Slurm's gres plugin sets it to the GPUs the job holds
        if os.environ.get("SLURM_CONF"):
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]  # sbatch/squeue/scancel find the cluster
        return env

    def get_req_subvars(self) -> dict[str, Any]:
        subvars = super().get_req_subvars()
        job = self.portal_slurm
        if not job:  # querying or cancelling a job needs none of it; start() refuses without it
            return subvars
        subvars.update(
            account=shlex.quote(str(job["account"])),
            job_name=shlex.quote(str(job["job_name"])),
            partition=shlex.quote(str(job["partition"])) if job.get("partition") else "",
            ngpus=int(job["gpus"]) or "",
            nprocs=int(job["cpus"]),
            memory=f"{int(job['memory_mb'])}M",
            runtime=int(job["time_minutes"]),
        )
        return subvars

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.portal_slurm = state.get("portal_slurm") or None

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.portal_slurm:
            state["portal_slurm"] = self.portal_slurm
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.portal_slurm = None

    async def start(self) -> Any:
        if not self.portal_slurm:
            raise SpawnException(NO_DECISION, reason="portal_unavailable", status_code=503)
        (Path(self.req_homedir) / ".portal-jobs").mkdir(parents=True, exist_ok=True)
        return await super().start()

    async def progress(self) -> Any:
        job = self.portal_slurm or {}
        where = f" on {self.cluster_name}" if self.cluster_name else ""
        async for event in super().progress():
            message = event.get("message", "")
            if message.startswith("Pending"):
                message = f"Queued{where} as job {self.job_id} ({job.get('job_name', '')}): waiting for resources"
            elif message.startswith("Cluster job running"):
                message = f"Job {self.job_id} is running{where}: the notebook server is starting"
            yield {**event, "message": message}
