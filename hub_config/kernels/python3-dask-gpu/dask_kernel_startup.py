"""Startup of the "Python 3 (Dask GPU)" kernel: gives the notebook a Dask ``client``.

kernel.json runs this file in the notebook's namespace (``--IPKernelApp.exec_files``), so ``client``,
``cluster`` and ``dask_banner`` (what was printed) are defined when the first cell runs:

- ``DASK_GATEWAY__ADDRESS`` set (the hub runs Dask Gateway): a ``dask_gateway.GatewayCluster`` for the notebook's
  session (``PORTAL_NOTEBOOK_SESSION``): the scheduler and ``DASK_KERNEL_N_WORKERS`` workers (default 2) run as
  Slurm jobs charged to the notebook's allocation. If the gateway refuses (the portal's reason) or fails, or the
  cluster does not start within ``DASK_KERNEL_GATEWAY_TIMEOUT`` seconds (default 180), the reason is printed and
  the kernel falls back to a local cluster;
- otherwise ``CUDA_VISIBLE_DEVICES`` lists GPUs that can be used and ``dask_cuda`` imports:
  ``dask_cuda.LocalCUDACluster``, one worker per visible GPU;
- otherwise (no GPU allocated or usable, or no dask-cuda): ``distributed.LocalCluster`` sized to the CPUs the
  server may use (``CPU_LIMIT``/``MEM_LIMIT`` as set by the spawner, else the CPU affinity).

The banner names the GPUs the kernel really sees (``nvidia-smi`` for the devices in ``CUDA_VISIBLE_DEVICES``),
or says that none is visible, or that the assigned ones cannot be used here. Nothing here imports CuPy or
otherwise creates a CUDA context before the cluster starts (dask-cuda warns about, and suffers from, a context
that already exists; nvidia-smi creates none). The dashboard link goes through jupyter-server-proxy
(``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status``) for local clusters, and through the gateway for gateway
clusters. Both are closed when the kernel exits.

Environment knobs: ``DASK_KERNEL_N_WORKERS``, ``DASK_KERNEL_THREADS_PER_WORKER`` (CPU cluster),
``DASK_KERNEL_GATEWAY_TIMEOUT``, ``DASK_KERNEL_DISABLE=1`` (start no cluster). ``benchmarks/gpu_check.py``
imports ``start_dask`` from here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import time
from typing import Any

Environ = dict[str, str] | os._Environ[str]

#: What the last ``start_dask`` printed (also when quiet); the kernel's namespace gets it as ``dask_banner``.
dask_banner = ""
#: dask-gateway clients this file made, kept until the interpreter exits: Gateway.__del__ closes a client (again,
#: raising RuntimeError once closed), and run by the garbage collector while another Gateway starts its event loop
#: it can deadlock on distributed's LoopRunner lock. At interpreter exit __del__ does nothing.
_keep_alive: list[Any] = []


def visible_gpus(environ: Environ = os.environ) -> list[str]:
    """GPU ids listed in CUDA_VISIBLE_DEVICES (unset or empty: none; "-1"/"NoDevFiles": none)."""
    value = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids or ids[0] in {"-1", "NoDevFiles"}:
        return []
    return ids


def gpu_devices(environ: Environ = os.environ) -> tuple[list[str], str]:
    """The GPUs this kernel can use, as ``nvidia-smi`` describes them (``"0, NVIDIA H200, 143771 MiB"``), and
    why there are none when CUDA_VISIBLE_DEVICES lists some. Runs nvidia-smi only: no CUDA context."""
    gpus = visible_gpus(environ)
    if not gpus:
        return [], ""
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi is None:
        return [], "no NVIDIA driver"
    try:
        result = subprocess.run(
            [smi, f"--id={','.join(gpus)}", "--query-gpu=index,name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            env=dict(environ),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed: {exc}"
    rows = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not rows:
        said = (result.stdout + result.stderr).strip().splitlines()
        driver = not said or any("driver" in line.lower() for line in said)
        return [], "no NVIDIA driver" if driver else f"nvidia-smi: {said[0]}"
    return rows, ""


def describe_gpus(environ: Environ = os.environ) -> str:
    """One line for the banner: the devices seen, "no GPU visible", or assigned GPUs that cannot be used."""
    gpus = visible_gpus(environ)
    if not gpus:
        return "no GPU visible"
    devices, why = gpu_devices(environ)
    if not devices:
        return f"GPUs {','.join(gpus)} were assigned but none can be used here ({why})"
    return "GPUs: " + "; ".join(devices)


def cpu_budget(environ: Environ = os.environ) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    limit = environ.get("CPU_LIMIT")
    if limit:
        with contextlib.suppress(ValueError):
            cpus = min(cpus, max(1, int(float(limit))))
    return max(1, cpus)


def dashboard_url(port: int | None, environ: Environ = os.environ) -> str | None:
    if not port:
        return None
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        return f"{prefix.rstrip('/')}/proxy/{port}/status"
    return f"http://127.0.0.1:{port}/status"


def _n_workers(default: int) -> int:
    with contextlib.suppress(ValueError):
        return max(1, int(os.environ.get("DASK_KERNEL_N_WORKERS") or default))
    return default


def _workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def _gateway_cluster(say: Any) -> tuple[Any, Any] | None:
    """``(client, cluster)`` on Dask Gateway for this notebook's session, or None (the reason said)."""
    session = os.environ.get("PORTAL_NOTEBOOK_SESSION", "").strip()
    if not session.isdigit():
        say("Dask Gateway is not used: this notebook has no portal session (PORTAL_NOTEBOOK_SESSION).")
        return None
    timeout = float(os.environ.get("DASK_KERNEL_GATEWAY_TIMEOUT") or 180)
    deadline = time.monotonic() + timeout
    cluster = client = gateway = name = None
    try:
        from dask_gateway import Gateway

        gateway = Gateway()  # address, proxy address and JupyterHub auth from DASK_GATEWAY__* (set by the hub)
        _keep_alive.append(gateway)
        # GatewayCluster(session=...), in two steps so that a cluster stuck in Slurm's queue cannot hold the
        # kernel's start for ever: submit, wait until it runs or the deadline passes, then connect.
        name = gateway.submit(session=int(session))
        while True:
            report = gateway.get_cluster(name)
            status = getattr(report.status, "name", str(report.status))
            if status == "RUNNING":
                break
            if status in ("FAILED", "STOPPED"):
                raise RuntimeError(f"the cluster {status.lower()} while starting (see the gateway's log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the scheduler's Slurm job did not start within {timeout:g} s")
            time.sleep(1)
        cluster = gateway.connect(name, shutdown_on_close=True)
        _keep_alive.append(cluster)
        wanted = _n_workers(2)
        cluster.scale(wanted)
        client = cluster.get_client()
        with contextlib.suppress(Exception):  # workers still queued in Slurm: say how many run
            client.wait_for_workers(wanted, timeout=max(1.0, deadline - time.monotonic()))
        return client, cluster
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        say(f"Dask Gateway did not give this notebook a cluster: {reason}")
        for closable in (client, cluster):
            with contextlib.suppress(Exception):
                closable.close()
        _keep_alive.extend([client, cluster])
        if cluster is None and gateway is not None and name is not None:
            with contextlib.suppress(Exception):
                gateway.stop_cluster(name)
        return None
    finally:
        if gateway is not None:
            with contextlib.suppress(Exception):  # its event loop lives on while the cluster's own client uses it
                gateway.close()


def _gpu_cluster(gpus: list[str], say: Any) -> Any | None:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        say(f"dask-cuda is not installed ({exc}); using CPU workers although GPUs {','.join(gpus)} are visible")
        return None
    return LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=",".join(gpus),
        dashboard_address="127.0.0.1:0",
        local_directory=os.environ.get("DASK_TEMPORARY_DIRECTORY"),
    )


def _cpu_cluster() -> Any:
    from distributed import LocalCluster

    cpus = cpu_budget()
    n_workers = _n_workers(min(4, cpus))
    threads = int(os.environ.get("DASK_KERNEL_THREADS_PER_WORKER") or max(1, cpus // n_workers))
    kwargs: dict[str, Any] = {}
    mem_limit = os.environ.get("MEM_LIMIT")
    if mem_limit and mem_limit.isdigit():
        kwargs["memory_limit"] = int(mem_limit) // n_workers
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        dashboard_address="127.0.0.1:0",
        local_directory=os.environ.get("DASK_TEMPORARY_DIRECTORY"),
        **kwargs,
    )


def start_dask(*, quiet: bool = False) -> tuple[Any, Any]:
    """Starts the cluster for this kernel and returns ``(client, cluster)``; closed at exit."""
    global dask_banner
    started = time.monotonic()
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if not quiet:
            print(line, flush=True)

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        # The dashboard link that Dask's widgets show for local clusters: through jupyter-server-proxy.
        import dask

        dask.config.set({"distributed.dashboard.link": prefix.rstrip("/") + "/proxy/{port}/status"})
    from distributed import Client

    gpus = visible_gpus()
    gpu_line = describe_gpus()
    client = cluster = None
    kind = ""
    if os.environ.get("DASK_GATEWAY__ADDRESS"):
        found = _gateway_cluster(say)
        if found is not None:
            client, cluster = found
            kind = "gateway"
        else:
            say("Falling back to a local Dask cluster inside this notebook server (not on Slurm, not multi-node).")
    if cluster is None:
        usable = bool(gpus) and not gpu_line.startswith(f"GPUs {','.join(gpus)} were assigned")
        cluster = _gpu_cluster(gpus, say) if usable else None
        kind = "LocalCUDACluster" if cluster is not None else "LocalCluster"
        if cluster is None:
            cluster = _cpu_cluster()
        client = Client(cluster)

    def _close() -> None:
        for closable in (client, cluster):
            with contextlib.suppress(Exception):  # best effort at interpreter exit
                closable.close()

    atexit.register(_close)
    workers = len(client.scheduler_info().get("workers", {}))
    elapsed = time.monotonic() - started
    if kind == "gateway":
        wanted = _n_workers(2)
        running = (
            _workers(workers)
            if workers >= wanted
            else f"{workers} of {_workers(wanted)} running (the rest wait in Slurm's queue)"
        )
        allocation = os.environ.get("PORTAL_ALLOCATION") or "of this notebook"
        say(
            f"Dask Gateway on the factory cluster (Slurm): {running}, charged to allocation {allocation}; "
            "cluster.scale(n) / cluster.adapt(minimum=, maximum=) to resize"
        )
        say(f"Ready in {elapsed:.1f} s. This notebook server: {gpu_line}.")
        if getattr(cluster, "dashboard_link", None):
            say(f"Dashboard: {cluster.dashboard_link}")
    else:
        where = f"GPUs {','.join(gpus)}" if kind == "LocalCUDACluster" else "CPU"
        seen = gpu_line[0].upper() + gpu_line[1:]
        say(f"Dask {kind} ({where}): {_workers(workers)}, ready in {elapsed:.1f} s. {seen}.")
        port = client.scheduler_info().get("services", {}).get("dashboard")
        link = dashboard_url(port)
        if link:
            say(f"Dashboard: {link}")
    if kind == "gateway":
        say("`client` is connected; the cluster and its Slurm jobs end when the kernel stops.")
    else:
        say("`client` is connected; it closes when the kernel stops.")
    dask_banner = "\n".join(lines)
    return client, cluster


if __name__ == "__main__" and os.environ.get("DASK_KERNEL_DISABLE") != "1":
    # Run by the kernel (exec_files executes this file with __name__ == "__main__").
    client, cluster = start_dask()
