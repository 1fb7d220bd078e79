"""Benchmark: notebooks on the factory cluster (Slurm) against the local spawner and a bare Slurm spawn.

Everything real: the portal (``create_app`` on a scratch PostgreSQL database, served by werkzeug in a thread),
the test Slurm 22.05 with accounting (``portal_standin.devstack_slurm.SlurmCluster``: 8 declared CPUs, 2 fake GPUs)
and three JupyterHubs with configurable-http-proxy:

- **slurm**: ``hub_config/jupyterhub_config.py`` with ``HUB_SPAWNER=slurm``: every spawn asks the portal's
  spawn check, which decides the job (account, partition, sizes, time limit); FactorySlurmSpawner submits it;
- **bare slurm**: the same file loaded by ``benchmarks/hub_bare_slurm_config.py``, which only replaces the
  portal's check by the same job, fixed (same account, sizes and time limit);
- **local**: the same file with the default SimpleLocalProcessSpawner (the demo's path), through the portal.

Each run times, from the first call (the Launch button's service, ``launch_notebook``; for the bare hub its
POST) to: the server ready (click-to-ready, polled every 0.1 s as the session page would) and the first
result of ``client.submit(sum, [1, 2, 3])`` in a new "Python 3 (Dask GPU)" kernel (click-to-first-Dask-result).
The three kinds run interleaved (the order rotates each run) after one warm-up each; servers are stopped
between runs. Medians are reported, with the portal's overhead on the cluster path: slurm / bare slurm.

Then Dask Gateway (a fourth hub: the slurm one with ``HUB_DASK_GATEWAY=1``): in a notebook launched through
the portal, ``--gateway-runs`` times: a ``GatewayCluster`` start (the portal's gateway check, the scheduler's
Slurm job), scale-up 0 → 2 workers (two worker jobs), the first result, scale-up 2 → 4.

    .venv/bin/python benchmarks/bench_slurm_notebooks.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from bench_notebooks import KERNEL, hub, kernel_result, served, wait_gone, wait_ready
from benchcommon import check_invariants, machine_summary, make_project, make_site, scratch_databases
from sqlmodel import Session

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from portal_standin.devstack import free_port  # noqa: E402
from portal_standin.devstack_slurm import SlurmCluster  # noqa: E402

from portal import create_app  # noqa: E402
from portal.compute.hub_client import HubClient  # noqa: E402
from portal.compute.launch import launch_notebook, stop_notebook  # noqa: E402
from portal.compute.services import hub_username  # noqa: E402
from portal.config import load_settings  # noqa: E402
from portal.db import utcnow  # noqa: E402
from portal.identity.models import User  # noqa: E402
from portal.ledger import services as ledger  # noqa: E402
from portal.ledger.models import AllocationSource  # noqa: E402
from portal.metering.slurm import account_name, sync_cluster  # noqa: E402
from tests.compute.test_hub import SERVICE_TOKEN, run_in_kernel  # noqa: E402

BARE_SLURM_CONFIG = Path(__file__).resolve().parent / "hub_bare_slurm_config.py"
HOUR = 3600
PROFILE = {"name": "cpu", "label": "CPU only: 2 cores, 1 GB", "gpus": 0, "cpus": 2, "memory_gb": 1}


def timed(start_call, client: HubClient, process, user: str, name: str, stop) -> tuple[float, float]:
    start = time.perf_counter()
    start_call()
    url = wait_ready(client, user, name, timeout=300)
    ready = time.perf_counter()
    kernel_result(process, url)
    done = time.perf_counter()
    stop()
    wait_gone(client, user, name, timeout=60)
    return ready - start, done - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (user with CREATEDB)")
    parser.add_argument("--runs", type=int, default=5, help="launches of each kind (default 5)")
    parser.add_argument("--gateway-runs", type=int, default=3, help="gateway clusters started (default 3)")
    args = parser.parse_args()

    print(machine_summary(args.database_url), flush=True)
    with (
        scratch_databases(args.database_url, "slurmnb") as scratch,
        tempfile.TemporaryDirectory() as tmp,
    ):
        slurm = SlurmCluster(Path(tmp) / "slurm").start()
        _name, url = scratch.create()
        site_code = f"b{utcnow():%H%M%S}"
        settings = load_settings(
            env="test",
            instance_path=Path(tmp) / "instance",
            database_url=url,
            secret_key="bench-secret-key",  # noqa: S106
            oidc_providers=[],
            hub_api_token=SERVICE_TOKEN,
            notebook_profiles=[PROFILE],
            log_level="WARNING",
            slurm_clusters=[
                {"name": "factory", "site": site_code, "slurm_conf": str(slurm.conf), "notebook_user": "root"}
            ],
        )
        ports = {kind: free_port() for kind in ("slurm", "local")}
        app = create_app(settings)
        engine = app.extensions["portal.engine"]
        today = utcnow().date()
        quarters = sorted({ledger.quarter_of(today + timedelta(days=d)) for d in (-40, 0, 40)})
        with Session(engine, expire_on_commit=False) as db:
            world = make_site(db, quarters, capacity=10_000_000 * HOUR)
            world.site.code = site_code
            db.add(world.site)
            db.commit()
            project = make_project(db, world.pi, "Slurm bench")
            now = utcnow()
            allocation = ledger.open_allocation(
                db,
                None,
                project=project,
                resource=world.cpu,
                amount=10_000 * HOUR,
                starts_at=now - timedelta(days=1),
                ends_at=now + timedelta(days=30),
                source=AllocationSource.AWARD,
                title="cpu for the bench",
            )
            assert sync_cluster(db, settings.slurm_clusters[0]).problems == []
            account = account_name(world.site, allocation)
        job = {"cluster": "factory", "account": account, "partition": "", "gpus": 0, "cpus": 2}
        job |= {"memory_mb": 1024, "time_minutes": 60}
        slurm_env = {
            "HUB_SPAWNER": "slurm",
            "PORTAL_HUB_SLURM_CLUSTER": "factory",
            "HUB_SLURM_HOME_ROOT": str(Path(tmp) / "homes"),
            "HUB_SLURM_SERVER_IP": "127.0.0.1",
            "SLURM_CONF": str(slurm.conf),
            "BENCH_BARE_SLURM_JOB": json.dumps(job),
        }
        with served(app) as portal_url:
            hubs = {
                "slurm": hub(settings, portal_url, Path(tmp) / "hub-slurm"),
                "bare slurm": hub(settings, portal_url, Path(tmp) / "hub-bare", config=BARE_SLURM_CONFIG),
                "local": hub(settings, portal_url, Path(tmp) / "hub-local"),
            }
            hubs["slurm"].port, hubs["local"].port = ports["slurm"], ports["local"]
            hubs["slurm"].env.update(slurm_env)
            hubs["bare slurm"].env.update(slurm_env)
            gateway_hub = hub(settings, portal_url, Path(tmp) / "hub-gateway")
            gateway_hub.env.update(slurm_env)
            gateway_hub.env.update(
                {
                    "HUB_DASK_GATEWAY": "1",
                    "HUB_DASK_GATEWAY_PORT": str(free_port()),
                    "HUB_DASK_GATEWAY_TCP_PORT": str(free_port()),
                    "HUB_DASK_GATEWAY_SCHEDULER_MEMORY": "512 M",
                }
            )
            gateway: list[dict[str, float]] = []
            results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in hubs}
            try:
                for process in hubs.values():
                    process.start(timeout=120)
                clients = {kind: HubClient(process.url, SERVICE_TOKEN) for kind, process in hubs.items()}
                per_hub = {
                    kind: settings.model_copy(
                        update={"hub_url": process.url, "hub_slurm_cluster": "factory" if kind == "slurm" else ""}
                    )
                    for kind, process in hubs.items()
                }
                with Session(engine, expire_on_commit=False) as db:
                    pi = db.get(User, world.pi.id)
                    assert pi is not None
                    user = hub_username(pi)

                    def run(kind: str, label: str) -> tuple[float, float]:
                        client, process = clients[kind], hubs[kind]
                        if kind == "bare slurm":
                            name = f"bare-{label}"
                            options = {"allocation": allocation.id, "profile": "cpu", "hours": 1}
                            return timed(
                                lambda: (client.ensure_user(user), client.start_server(user, name, options)),
                                client,
                                process,
                                user,
                                name,
                                lambda: client.stop_server(user, name),
                            )
                        launched: list[Any] = []

                        def start() -> None:
                            launched.append(
                                launch_notebook(
                                    db, per_hub[kind], client, pi, allocation_id=allocation.id, profile="cpu", hours=1
                                )
                            )

                        def stop() -> None:
                            stop_notebook(db, per_hub[kind], client, pi, session_id=launched[0].session.id)

                        start_clock = time.perf_counter()
                        start()
                        url = wait_ready(client, user, launched[0].server_name, timeout=300)
                        ready = time.perf_counter()
                        kernel_result(process, url)
                        done = time.perf_counter()
                        stop()
                        wait_gone(client, user, launched[0].server_name, timeout=60)
                        return ready - start_clock, done - start_clock

                    kinds = list(hubs)
                    for kind in kinds:  # warm-up: first imports, first proxy routes, not counted
                        run(kind, "warmup")
                    for i in range(args.runs):
                        order = kinds[i % 3 :] + kinds[: i % 3]
                        for kind in order:
                            results[kind].append(run(kind, str(i)))
                            ready, first = results[kind][-1]
                            print(f"  run {i + 1} {kind}: ready {ready:.2f} s, first Dask result {first:.2f} s")
                    print(f"Dask Gateway, {args.gateway_runs} clusters", flush=True)
                    gateway_hub.start(timeout=120)
                    gateway = bench_gateway(db, settings, gateway_hub, pi, allocation.id, args.gateway_runs)
            finally:
                for process in [*hubs.values(), gateway_hub]:
                    process.stop()
                slurm.destroy()
        engine.dispose()
        check_invariants(url)
        print("ledger invariants hold", flush=True)
    summary = {
        kind: {
            "ready_s": statistics.median(r[0] for r in rows),
            "result_s": statistics.median(r[1] for r in rows),
            "all_result_s": [round(r[1], 2) for r in rows],
        }
        for kind, rows in results.items()
    }
    print(json.dumps(summary, indent=2))
    print("\n| path | click to ready | click to first Dask result |")
    print("| --- | --- | --- |")
    for kind, row in summary.items():
        print(f"| {kind} | {row['ready_s']:.2f} s | {row['result_s']:.2f} s |")
    overhead = summary["slurm"]["result_s"] / summary["bare slurm"]["result_s"]
    print(f"\nportal on the cluster / bare Slurm spawn (first Dask result, medians): {overhead:.3f}")
    if gateway:
        print(f"\n| Dask Gateway (median of {len(gateway)}) | seconds |")
        print("| --- | --- |")
        for key, label in GATEWAY_STEPS.items():
            print(f"| {label} | {statistics.median(g[key] for g in gateway):.2f} s |")


GATEWAY_STEPS = {
    "start": "cluster start (gateway check + scheduler job)",
    "up2": "scale-up 0 → 2 workers",
    "first": "first result on the workers",
    "up4": "scale-up 2 → 4 workers",
}
GATEWAY_CODE = """
import json, os, time
from dask_gateway import GatewayCluster
client.close(); cluster.close()
runs = []
for _ in range({n}):
    t0 = time.perf_counter()
    c = GatewayCluster(session=int(os.environ["PORTAL_NOTEBOOK_SESSION"]))
    t1 = time.perf_counter()
    cl = c.get_client()
    c.scale(2); cl.wait_for_workers(2, timeout=600)
    t2 = time.perf_counter()
    assert cl.submit(sum, [1, 2, 3]).result() == 6
    t3 = time.perf_counter()
    c.scale(4); cl.wait_for_workers(4, timeout=600)
    t4 = time.perf_counter()
    cl.close(); c.shutdown()
    runs.append({{"start": t1 - t0, "up2": t2 - t1, "first": t3 - t2, "up4": t4 - t3}})
print(json.dumps(runs))
"""


def bench_gateway(db, settings, process, pi, allocation_id: int, n: int) -> list[dict[str, float]]:
    """Gateway clusters started and scaled in a notebook launched through the portal on the gateway hub."""
    hub_settings = settings.model_copy(update={"hub_url": process.url, "hub_slurm_cluster": "factory"})
    client = HubClient(process.url, SERVICE_TOKEN)
    launch = launch_notebook(db, hub_settings, client, pi, allocation_id=allocation_id, profile="cpu", hours=1)
    url = wait_ready(client, launch.hub_user, launch.server_name, timeout=300)
    headers = {"Authorization": f"token {SERVICE_TOKEN}"}
    kernel = requests.post(f"{process.url}{url}api/kernels", headers=headers, json={"name": KERNEL}, timeout=60)
    kernel.raise_for_status()
    out = run_in_kernel(process, url, kernel.json()["id"], GATEWAY_CODE.format(n=n), timeout=1800)
    runs = json.loads(out.strip().splitlines()[-1])
    for run in runs:
        print("  " + ", ".join(f"{GATEWAY_STEPS[k]}: {v:.2f} s" for k, v in run.items()), flush=True)
    stop_notebook(db, hub_settings, client, pi, session_id=launch.session.id)
    return runs


if __name__ == "__main__":
    main()
