"""GPU check of the "Python 3 (Dask GPU)" kernel, for a machine with an NVIDIA GPU.

It runs the kernel's startup code (hub_config/kernels/python3-dask-gpu/dask_kernel_startup.py: a
``dask_cuda.LocalCUDACluster`` with one worker per visible GPU), then a CuPy-backed Dask reduction and a
Dask matrix product, each against raw CuPy on one GPU, and prints the time to the first result and the
Dask/CuPy ratios.

Needs, besides the [hub] extra (dask and distributed 2026.7.1):

    pip install "dask-cuda==26.10.*" "rapids-dask-dependency==26.10.*" cupy-cuda13x

(rapids-dask-dependency 26.10 pins dask/distributed to 2026.7.1; cupy-cuda13x needs a CUDA 13 driver).

    python benchmarks/gpu_check.py                    # defaults: 4 GiB sum, 16384² matmul
    python benchmarks/gpu_check.py --sum-gib 16 --chunk-mib 512 4096 --matmul-n 32768 --matmul-block 8192
    python benchmarks/gpu_check.py --json out.json

Without a GPU, dask-cuda or CuPy it exits with status 2 and says what is missing. ``--cpu-dry-run`` runs the
same steps with NumPy on a CPU LocalCluster (tiny sizes), to check the script itself.

Nothing here touches CUDA before the cluster has started (dask-cuda warns when the process already has a
CUDA context): GPUs are found with ``nvidia-smi -L`` and CuPy is imported only afterwards.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

STARTUP = Path(__file__).resolve().parent.parent / "hub_config/kernels/python3-dask-gpu/dask_kernel_startup.py"


def load_startup() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dask_kernel_startup", STARTUP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_gpus() -> list[str]:
    """GPU indices from nvidia-smi (no CUDA context is created)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def missing_requirements() -> list[str]:
    missing = []
    for module, package in (("cupy", "cupy-cuda13x"), ("dask_cuda", "dask-cuda==26.10.*")):
        if importlib.util.find_spec(module) is None:
            missing.append(package)
    return missing


def _synchronize(library: str) -> None:
    if library == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()


def _same(block: Any) -> Any:
    return block


def best_of(repeats: int, run: Any) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sum-gib", type=float, default=4.0, help="size of the float32 array summed (GiB)")
    parser.add_argument("--chunk-mib", type=int, nargs="+", default=[512, 2048], help="Dask chunk sizes (MiB)")
    parser.add_argument("--matmul-n", type=int, default=16384, help="n of the n×n float32 matrix product")
    parser.add_argument("--matmul-block", type=int, default=8192, help="Dask block edge of the matrix product")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cpu-dry-run", action="store_true", help="NumPy on a CPU LocalCluster, tiny sizes")
    args = parser.parse_args(argv)

    if args.cpu_dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        args.sum_gib, args.chunk_mib, args.matmul_n, args.matmul_block = 1 / 64, [4], 512, 256
    else:
        gpus = find_gpus()
        missing = missing_requirements()
        if not gpus or missing:
            why = "no NVIDIA GPU found (nvidia-smi -L lists none)" if not gpus else ""
            if missing:
                why += ("; " if why else "") + "missing Python packages: " + ", ".join(missing)
            print(f"gpu_check: cannot run here: {why}. See this script's docstring.", file=sys.stderr)
            return 2
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", ",".join(gpus))

    startup = load_startup()
    results: dict[str, Any] = {"gpus": startup.visible_gpus()}

    # 1. The kernel's startup, as a notebook sees it, and the first result.
    started = time.perf_counter()
    client, cluster = startup.start_dask()
    results["cluster"] = type(cluster).__name__
    results["cluster_start_s"] = time.perf_counter() - started
    assert client.submit(sum, [1, 2, 3]).result() == 6
    results["time_to_first_result_s"] = time.perf_counter() - started
    results["workers"] = len(client.scheduler_info()["workers"])

    # Only now: the array library (CuPy creates a CUDA context in this process).
    import dask.array as da
    import numpy as np
    from distributed import wait

    if args.cpu_dry_run:
        xp: Any = np

        def sync() -> None:
            pass
    else:
        import cupy

        xp = cupy

        def sync() -> None:
            cupy.cuda.Device().synchronize()

    def random_blocks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Any:
        def make(block_info: Any = None) -> Any:
            import importlib

            lib = importlib.import_module(xp.__name__)
            return lib.random.default_rng().random(block_info[None]["chunk-shape"], dtype=lib.float32)

        return da.map_blocks(make, dtype=np.float32, chunks=da.core.normalize_chunks(chunks, shape))

    def fresh(array: Any) -> Any:
        """The same blocks under new keys: Dask would otherwise reuse a result still held from a repeat."""
        return array.map_blocks(_same, name=f"rep-{uuid.uuid4().hex}", dtype=array.dtype)

    # 2. A memory-bound reduction.
    def raw_sum(n: int) -> float:
        raw = xp.random.default_rng().random(n, dtype=xp.float32)
        sync()
        return best_of(args.repeats, lambda: (float(raw.sum()), sync()))

    def raw_matmul(m: int) -> float:
        a_raw = xp.random.default_rng().random((m, m), dtype=xp.float32)
        b_raw = xp.random.default_rng().random((m, m), dtype=xp.float32)
        sync()
        return best_of(args.repeats, lambda: (a_raw @ b_raw, sync()))

    n = int(args.sum_gib * 2**30 // 4)
    raw_s = raw_sum(n)
    results["sum"] = {"bytes": n * 4, "raw_s": raw_s, "raw_TBps": n * 4 / raw_s / 1e12, "dask": {}}
    for chunk_mib in args.chunk_mib:
        chunk = max(1, min(n, chunk_mib * 2**20 // 4))
        x = random_blocks((n,), (chunk,)).persist()
        wait(x)
        dask_s = best_of(args.repeats, lambda x=x: float(fresh(x).sum().compute()))
        results["sum"]["dask"][f"{chunk_mib}MiB"] = {
            "s": dask_s,
            "TBps": n * 4 / dask_s / 1e12,
            "dask_over_raw_throughput": raw_s / dask_s,
        }
        del x

    # 3. A compute-bound matrix product.
    m, block = args.matmul_n, args.matmul_block
    flops = 2 * m**3
    raw_s = raw_matmul(m)

    def dask_matmul(m: int, block: int) -> float:
        a = random_blocks((m, m), (block, block)).persist()
        b = random_blocks((m, m), (block, block)).persist()
        wait([a, b])

        def once() -> None:
            product = (a @ fresh(b)).persist()
            wait(product)
            # A task returns when its CuPy kernels are queued: wait until the GPUs have run them.
            client.run(_synchronize, xp.__name__)
            del product

        return best_of(args.repeats, once)

    dask_s = dask_matmul(m, block)
    results["matmul"] = {
        "n": m,
        "block": block,
        "raw_TFLOPs": flops / raw_s / 1e12,
        "dask_TFLOPs": flops / dask_s / 1e12,
        "dask_over_raw_throughput": raw_s / dask_s,
    }
    client.close()
    cluster.close()

    print(f"cluster: {results['cluster']} with {results['workers']} workers (GPUs: {results['gpus'] or 'none'})")
    print(f"cluster start {results['cluster_start_s']:.2f} s, first result {results['time_to_first_result_s']:.2f} s")
    s = results["sum"]
    print(f"sum of {s['bytes'] / 2**30:.2f} GiB: raw {s['raw_TBps']:.3f} TB/s")
    for chunk, r in s["dask"].items():
        print(f"  Dask, {chunk} chunks: {r['TBps']:.3f} TB/s ({r['dask_over_raw_throughput']:.2f}× raw)")
    mm = results["matmul"]
    print(
        f"matmul {m}² fp32 in {block}² blocks: raw {mm['raw_TFLOPs']:.1f} TFLOP/s, Dask {mm['dask_TFLOPs']:.1f}"
        f" TFLOP/s ({mm['dask_over_raw_throughput']:.2f}× raw)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
