"""Startup of the "Python 3 (Dask GPU)" kernel: gives the notebook a Dask ``client``.

kernel.json runs this file in the notebook's namespace (``--IPKernelApp.exec_files``), so ``client`` and
``cluster`` are defined when the first cell runs:

- ``CUDA_VISIBLE_DEVICES`` lists GPUs and ``dask_cuda`` imports: ``dask_cuda.LocalCUDACluster``, one worker
  per visible GPU;
- otherwise (no GPU allocated, or no dask-cuda): ``distributed.LocalCluster`` sized to the CPUs the
  server may use (``CPU_LIMIT``/``MEM_LIMIT`` as set by the spawner, else the CPU affinity).

Nothing here imports CuPy or otherwise creates a CUDA context before the cluster starts (dask-cuda warns
about, and suffers from, a context that already exists). The dashboard link goes through
jupyter-server-proxy: ``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status``. Both are closed when the kernel
exits.

Environment knobs: ``DASK_KERNEL_N_WORKERS``, ``DASK_KERNEL_THREADS_PER_WORKER`` (CPU cluster),
``DASK_KERNEL_DISABLE=1`` (start no cluster). ``benchmarks/gpu_check.py`` imports ``start_dask`` from here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from typing import Any


def visible_gpus(environ: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """GPU ids listed in CUDA_VISIBLE_DEVICES (unset or empty: none; "-1"/"NoDevFiles": none)."""
    value = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids or ids[0] in {"-1", "NoDevFiles"}:
        return []
    return ids


def cpu_budget(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    limit = environ.get("CPU_LIMIT")
    if limit:
        with contextlib.suppress(ValueError):
            cpus = min(cpus, max(1, int(float(limit))))
    return max(1, cpus)


def dashboard_url(port: int | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    if not port:
        return None
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        return f"{prefix.rstrip('/')}/proxy/{port}/status"
    return f"http://127.0.0.1:{port}/status"


def _gpu_cluster(gpus: list[str]) -> Any | None:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        print(f"dask-cuda is not installed ({exc}); using CPU workers although GPUs {gpus} are visible")
        return None
    return LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=",".join(gpus),
        dashboard_address="127.0.0.1:0",
        local_directory=os.environ.get("DASK_TEMPORARY_DIRECTORY"),
    )


def _cpu_cluster() -> Any:
    from distributed import LocalCluster

    cpus = cpu_budget()
    n_workers = int(os.environ.get("DASK_KERNEL_N_WORKERS") or min(4, cpus))
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
    started = time.monotonic()
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        # The dashboard link that Dask's widgets show: through jupyter-server-proxy.
        import dask

        dask.config.set({"distributed.dashboard.link": prefix.rstrip("/") + "/proxy/{port}/status"})
    from distributed import Client

    gpus = visible_gpus()
    cluster = _gpu_cluster(gpus) if gpus else None
    kind = "LocalCUDACluster" if cluster is not None else "LocalCluster"
    if cluster is None:
        cluster = _cpu_cluster()
    client = Client(cluster)

    def _close() -> None:
        for closable in (client, cluster):
            with contextlib.suppress(Exception):  # best effort at interpreter exit
                closable.close()

    atexit.register(_close)
    if not quiet:
        workers = client.scheduler_info().get("workers", {})
        port = client.scheduler_info().get("services", {}).get("dashboard")
        where = f"GPUs {','.join(gpus)}" if kind == "LocalCUDACluster" else "CPU"
        print(f"Dask {kind} ({where}): {len(workers)} workers, ready in {time.monotonic() - started:.1f} s")
        link = dashboard_url(port)
        if link:
            print(f"Dashboard: {link}")
        print("`client` is connected; it closes when the kernel stops.")
    return client, cluster


if __name__ == "__main__" and os.environ.get("DASK_KERNEL_DISABLE") != "1":
    # Run by the kernel (exec_files executes this file with __name__ == "__main__").
    client, cluster = start_dask()
