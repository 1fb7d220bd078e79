"""How long each ``portal`` command takes to start: its ``--help``, five runs each, median wall and CPU time.

    .venv/bin/python benchmarks/bench_cli_start.py [--pythonpath DIR]

``--pythonpath`` runs another checkout's ``portal`` package (e.g. a ``git worktree`` of an older commit) with the
same environment, for a before/after comparison. CPU time is the child's user + system time (getrusage), which a
busy machine inflates much less than wall time. Results in BENCHMARKS.md ("Command start-up").
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["db", "upgrade", "--help"], ["worker", "--help"], ["usage", "import-sacct", "--help"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pythonpath", help="import the portal package from this checkout instead")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    portal = str(Path(sys.executable).parent / "portal")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PORTAL_")}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    for command in COMMANDS:
        walls, cpus = [], []
        for _ in range(args.runs):
            before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run([portal, *command], capture_output=True, env=env, check=True)
            walls.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        print(
            f"portal {' '.join(command):30} wall {statistics.median(walls):.2f} s"
            f"  CPU {statistics.median(cpus):.2f} s (least {min(cpus):.2f} s)"
        )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
