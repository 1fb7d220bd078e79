"""The Slurm benchmark's "bare" hub: hub_config/jupyterhub_config.py with HUB_SPAWNER=slurm, except that spawns
are not checked by the portal: every server is the job in ``BENCH_BARE_SLURM_JOB`` (JSON: the account,
partition and sizes the portal's check decides for the ``cpu`` profile), so the jobs are the same. For
benchmarks only: a hub without the portal's check lets anyone start anything on any account.
"""

import json
import os
from pathlib import Path

c = get_config()  # noqa: F821
load_subconfig(str(Path(__file__).resolve().parent.parent / "hub_config" / "jupyterhub_config.py"))  # noqa: F821

JOB = json.loads(os.environ["BENCH_BARE_SLURM_JOB"])


async def the_benchmarks_job(spawner, user_options):
    spawner.portal_slurm = {**JOB, "job_name": f"bare-{spawner.name}"}
    spawner.environment = {**spawner.environment, "CUDA_VISIBLE_DEVICES": "", "PORTAL_PROFILE": "cpu"}


c.Spawner.apply_user_options = the_benchmarks_job
